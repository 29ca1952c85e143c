"""Celery: the app bound to Flask, and the dispatch tasks (the embedded worker's units of work)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, Task, bootsteps, shared_task
from celery.signals import worker_process_init
from flask import Flask, current_app
from kombu.entity import Queue

from mobile_api import healthcheck, periodic, priority
from mobile_api.extensions import db
from mobile_api.services import dispatch, notify_dispatch
from models import Campaign, utcnow

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30.0
# A recovery not started this many stall intervals after it was queued is taken
# for lost with its message, and the sweep may queue another.
RECOVERY_LOST_AFTER_STALLS = 10
# Chunk tasks note progress at most this many times per stall interval.
PROGRESS_NOTES_PER_STALL = 10
SEND_NOTIFICATIONS = "mobile_api.notifications.send"


def make_celery(app: Flask) -> Celery:
    """A Celery app whose tasks run inside `app`'s context; stored as app.extensions["celery"]."""

    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    class PushTransportStep(bootsteps.Step):
        """Build the push transport as the worker starts: a bad FCM_CREDENTIALS stops it."""

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            dispatch.transport(app)  # raises, and the worker exits before taking a task
            # Each pool process builds its own as it starts, not at its first chunk.
            worker_process_init.connect(self.build, weak=False)

        def build(self, **_kwargs: Any) -> None:
            dispatch.transport(app)

    class CampaignPriorityStep(bootsteps.Step):
        """A worker of campaigns that does not take notifications yields the CPU to them.

        At DISPATCH_CAMPAIGN_NICE, set here, before the pool starts: its processes and
        threads inherit it. A worker that consumes the notification queue too keeps
        its priority, or notifications would wait with the campaigns.
        """

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            if notification_queue(app) not in parent.app.amqp.queues.consume_from:
                priority.lower_this_thread(int(app.config["DISPATCH_CAMPAIGN_NICE"]))

    class HeartbeatStep(bootsteps.StartStopStep):
        """Touch HEARTBEAT_FILE every few seconds from the worker's timer, for the healthcheck."""

        requires = {"celery.worker.components:Timer"}

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.path = app.config["HEARTBEAT_FILE"]
            self.timer: Any = None

        def start(self, parent: Any) -> None:
            if self.path:
                healthcheck.beat(self.path)
                self.timer = parent.timer.call_repeatedly(
                    healthcheck.HEARTBEAT_SECONDS, healthcheck.beat, (self.path,)
                )

        def stop(self, parent: Any) -> None:
            if self.timer is not None:
                self.timer.cancel()

    celery = Celery(app.import_name, task_cls=FlaskTask)
    celery.steps["worker"].add(PushTransportStep)
    celery.steps["worker"].add(HeartbeatStep)
    celery.steps["worker"].add(CampaignPriorityStep)
    queue = app.config["CELERY_QUEUE"]
    visibility = float(app.config["CELERY_VISIBILITY_TIMEOUT"])
    notifications_queue = notification_queue(app)
    schedule: dict[str, Any] = {
        "dispatch-sweep": {"task": "mobile_api.dispatch.sweep", "schedule": SWEEP_SECONDS},
    }
    for job in periodic.JOBS:
        schedule[job.name] = {
            "task": "mobile_api.periodic.run",
            "schedule": job.every_seconds,
            "args": (job.name,),
        }
    celery.conf.update(
        # No broker configured: the embedded dispatcher runs, and nothing may leak
        # to Celery's default (a RabbitMQ on localhost) by accident.
        broker_url=app.config["CELERY_BROKER_URL"] or "memory://",
        broker_connection_retry_on_startup=True,
        # Keys and queues of this deployment stay apart from anything else on the broker.
        broker_transport_options={
            "global_keyprefix": f"{queue}:",
            # Redis: a task a killed worker had taken (unacknowledged, acks_late)
            # goes back to the queue after the visibility timeout; Redis' default
            # of an hour left a campaign's chunk waiting that long. A task still
            # running by then is delivered once more, which the claims make harmless,
            # and no countdown is ever longer than half of it (_come_back).
            # RabbitMQ gives such a task back as soon as the connection drops.
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1.0, visibility / 6),
            "unacked_restore_throttle": 1,
        },
        task_default_queue=queue,
        task_ignore_result=True,
        # A chunk task lost with its worker is delivered again; the claim makes
        # a second run harmless (rows already claimed are skipped).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        beat_schedule=schedule,
        # Notifications have a queue of their own, so a worker consuming only it (-Q)
        # never finds one behind a campaign's chunks; a worker started without -Q
        # consumes both, so no deployment leaves notifications unsent.
        task_queues=(Queue(queue), Queue(notifications_queue)),  # type: ignore[no-untyped-call]
        task_routes={SEND_NOTIFICATIONS: {"queue": notifications_queue}},
    )
    celery.set_default()
    app.extensions["celery"] = celery
    return celery


def notification_queue(app: Flask) -> str:
    """The Celery queue of the notification lane: CELERY_QUEUE + ".notifications"."""
    return f"{app.config['CELERY_QUEUE']}.notifications"


def _enqueue(app: Flask, task: Task, args: tuple[Any, ...], what: str) -> None:
    """With Celery, enqueue `task`; embedded, nothing (the worker finds the work itself)."""
    if not app.config["CELERY_BROKER_URL"]:
        return
    from kombu.exceptions import OperationalError

    try:
        task.delay(*args)
    except OperationalError:
        # The work is committed; the beat sweep enqueues it once the broker is back,
        # so the request itself has succeeded.
        log.warning("broker unreachable; %s waits for the sweep", what)


def notify_queued(app: Flask, campaign_id: str) -> None:
    """Call after the commit that queued a campaign: with Celery, enqueue its dispatch."""
    _enqueue(app, dispatch_campaign, (campaign_id,), f"campaign {campaign_id}")


def notification_accepted(app: Flask, notification_id: str) -> None:
    """Call after the commit that accepted a notification: with Celery, wake its lane."""
    _enqueue(app, send_notifications, (), f"notification {notification_id}")


def _come_back(task: Task, args: tuple[Any, ...], at: datetime | None) -> None:
    """Run `task` again with `args` when the scheduling contract says its work is due.

    Never later than half the visibility timeout from now: a task waiting for its
    countdown is unacknowledged (acks_late), and one held past the timeout would be
    delivered again, and again. Work due soon is asked about again then; work due
    later than DISPATCH_COUNTDOWN_MAX_SECONDS (scheduled waves, the end of quiet
    hours) is not polled for by every chunk: the sweep finds it when it falls due.
    """
    if at is None:
        return
    wait = max((at - utcnow()).total_seconds(), 0.0)
    if wait > float(current_app.config["DISPATCH_COUNTDOWN_MAX_SECONDS"]):
        return
    longest = float(current_app.config["CELERY_VISIBILITY_TIMEOUT"]) / 2
    task.apply_async(args, countdown=min(wait, longest))


def _settings() -> dispatch.Settings:
    return dispatch.Settings.from_config(current_app.config)


def _stall() -> timedelta:
    return timedelta(seconds=float(current_app.config["DISPATCH_STALL_SECONDS"]))


def _send_due(campaign_id: str, first_id: int, last_id: int | None) -> None:
    """Claim, send and record the due deliveries of an id range, noting the progress."""
    settings = _settings()
    push = dispatch.transport(current_app)
    limiter = dispatch.send_limiter(current_app)
    every = _stall() / PROGRESS_NOTES_PER_STALL
    # A worker killed mid-chunk: its rows are this range's again once the lease lapses.
    dispatch.release_lapsed_claims(
        db.session, settings, campaign_id=campaign_id, first_id=first_id, last_id=last_id
    )
    after = first_id - 1
    while True:
        result = dispatch.process_chunk(
            db.session,
            push,
            campaign_id,
            settings,
            after_id=after,
            upto_id=last_id,
            limiter=limiter,
        )
        if not result.claimed:
            break
        after = result.last_id or after
        dispatch.note_progress(db.session, campaign_id, every)


def _ranges(first: int, last: int, width: int) -> list[tuple[int, int]]:
    return [(low, min(low + width - 1, last)) for low in range(first, last + 1, width)]


@shared_task(name="mobile_api.dispatch.campaign")
def dispatch_campaign(campaign_id: str) -> None:
    """Enumerate one page of a campaign's audience and enqueue its chunk tasks.

    The next page is a new task behind those chunks, so even a single worker
    starts sending after one page instead of after the whole audience.
    """
    settings = _settings()
    batch = dispatch.enumerate_batch(db.session, campaign_id, settings)
    if batch is not None and batch.first_id is not None and batch.last_id is not None:
        for first, last in _ranges(batch.first_id, batch.last_id, settings.chunk_size):
            dispatch_chunk.delay(campaign_id, first, last)
    if batch is not None and not batch.done:
        dispatch_campaign.delay(campaign_id)
    else:
        dispatch.finish_if_done(db.session, campaign_id)


@shared_task(name="mobile_api.dispatch.chunk", bind=True)
def dispatch_chunk(self: Task, campaign_id: str, first_id: int, last_id: int | None) -> None:
    """Send the due deliveries of one id range; come back when its retries are due."""
    _send_due(campaign_id, first_id, last_id)
    at = dispatch.due_at(
        db.session, campaign_id, first_id=first_id, last_id=last_id, settings=_settings()
    )
    _come_back(self, (campaign_id, first_id, last_id), at)
    dispatch.finish_if_done(db.session, campaign_id)


@shared_task(name=SEND_NOTIFICATIONS, bind=True)
def send_notifications(self: Task) -> None:
    """Send every notification delivery due now; come back when a retry is due."""
    settings = _settings()
    notify_dispatch.release_lapsed_claims(db.session, settings)
    push = dispatch.transport(current_app, notify_dispatch.LANE)
    notify_dispatch.drain(db.session, push, settings, dispatch.send_limiter(current_app))
    # Back-offs are capped by PUSH_RETRY_MAX_SECONDS: minutes, never hours.
    _come_back(self, (), notify_dispatch.next_due(db.session))


@shared_task(name="mobile_api.dispatch.sweep")
def sweep() -> None:
    """Resolve dead claims, queue one recovery of each stalled campaign, complete finished ones.

    A campaign whose tasks merely wait behind a long queue is not stalled while
    any of its chunks progresses; one that is gets at most one recovery at a time.
    """
    dispatch.release_lapsed_claims(db.session, _settings())
    notify_dispatch.release_lapsed_claims(db.session, _settings())
    if notify_dispatch.has_due(db.session):
        send_notifications.delay()  # its wake-up may have been lost with the broker
    stall = _stall()
    now = utcnow()
    for campaign_id in dispatch.active_campaign_ids(db.session):
        due = dispatch.next_due(db.session, campaign_id)
        campaign = db.session.get(Campaign, campaign_id)
        if campaign is None:
            continue
        if dispatch.stalled(campaign, due, now, stall) and dispatch.queue_recovery(
            db.session, campaign_id, now, stall * RECOVERY_LOST_AFTER_STALLS
        ):
            log.warning("campaign %s made no progress in %s: recovering it", campaign_id, stall)
            try:
                recover_campaign.delay(campaign_id)
            except Exception:
                dispatch.hold_recovery(db.session, campaign_id, None)  # none is outstanding
                raise
        elif _due_unattended(campaign, due, now):
            # Work due now that no task is coming back for (a wave of a scheduled
            # campaign, the end of quiet hours): send it.
            dispatch.note_progress(db.session, campaign_id, timedelta(0))
            dispatch_due.delay(campaign_id)
        dispatch.finish_if_done(db.session, campaign_id)


def _due_unattended(campaign: Campaign, due: datetime | None, now: datetime) -> bool:
    """Whether deliveries are due and no chunk of the campaign progressed for a sweep."""
    if due is None or due > now or not campaign.enumeration_done:
        return False
    quiet_since = now - timedelta(seconds=SWEEP_SECONDS)
    return campaign.progress_at is None or campaign.progress_at < quiet_since


@shared_task(name="mobile_api.dispatch.due", bind=True)
def dispatch_due(self: Task, campaign_id: str) -> None:
    """Send a campaign's deliveries due now; come back only if more fall due soon."""
    _send_due(campaign_id, 0, None)
    _come_back(self, (campaign_id,), dispatch.due_at(db.session, campaign_id, first_id=0))
    dispatch.finish_if_done(db.session, campaign_id)


@shared_task(name="mobile_api.dispatch.recover", bind=True)
def recover_campaign(self: Task, campaign_id: str) -> None:
    """Take a stalled campaign up again: the sweep keeps one of these outstanding at most.

    Nothing to do if the campaign progressed since (its tasks were only waiting).
    Else the enumeration chain goes on from its cursor, or the due deliveries are
    sent here, and this comes back for their retries.
    """
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        return
    queued_at, progress_at = campaign.recovery_queued_at, campaign.progress_at
    waited = queued_at is not None and progress_at is not None and progress_at > queued_at
    if not campaign.active or waited:
        dispatch.hold_recovery(db.session, campaign_id, None)
    elif not campaign.enumeration_done:
        dispatch.hold_recovery(db.session, campaign_id, None)
        dispatch_campaign(campaign_id)  # here: the next page, its chunks and the rest
        return
    else:
        _send_due(campaign_id, 0, None)
        due = dispatch.due_at(db.session, campaign_id, first_id=0, settings=_settings())
        dispatch.hold_recovery(db.session, campaign_id, due)
        _come_back(self, (campaign_id,), due)
    dispatch.finish_if_done(db.session, campaign_id)


@shared_task(name="mobile_api.periodic.run")
def run_periodic(name: str) -> None:
    """Run one registered periodic job (scheduled by Celery beat)."""
    periodic.run(name)
