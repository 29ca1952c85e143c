"""Celery: the app bound to Flask, and the dispatch tasks (the embedded worker's units of work)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, Task, bootsteps, shared_task
from celery.signals import worker_process_init
from flask import Flask, current_app

from mobile_api import healthcheck, periodic
from mobile_api.extensions import db
from mobile_api.services import dispatch
from models import Campaign, utcnow

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30.0
# A recovery not started this many stall intervals after it was queued is taken
# for lost with its message, and the sweep may queue another.
RECOVERY_LOST_AFTER_STALLS = 10
# Chunk tasks note progress at most this many times per stall interval.
PROGRESS_NOTES_PER_STALL = 10


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
    queue = app.config["CELERY_QUEUE"]
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
        broker_transport_options={"global_keyprefix": f"{queue}:"},
        task_default_queue=queue,
        task_ignore_result=True,
        # A chunk task lost with its worker is delivered again; the claim makes
        # a second run harmless (rows already claimed are skipped).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        beat_schedule=schedule,
    )
    celery.set_default()
    app.extensions["celery"] = celery
    return celery


def notify_queued(app: Flask, campaign_id: str) -> None:
    """Call after the commit that queued a campaign: with Celery, enqueue its dispatch."""
    if not app.config["CELERY_BROKER_URL"]:
        return  # embedded: the worker finds queued campaigns on its agenda
    from kombu.exceptions import OperationalError

    try:
        dispatch_campaign.delay(campaign_id)
    except OperationalError:
        # The campaign is committed as queued; the beat sweep enqueues it once
        # the broker is back, so the send itself has succeeded.
        log.warning("broker unreachable; campaign %s waits for the sweep", campaign_id)


def _come_back(task: Task, args: tuple[Any, ...], at: datetime | None) -> None:
    """Run `task` again with `args` when the scheduling contract says its work is due.

    Only for work due soon: under acks_late a countdown is a message the broker
    keeps unacknowledged until then (Redis redelivers it after its visibility
    timeout, a second copy). Later work, scheduled waves and quiet hours, is found
    by the sweep when it falls due.
    """
    if at is None:
        return
    wait = max((at - utcnow()).total_seconds(), 0.0)
    if wait <= float(current_app.config["DISPATCH_COUNTDOWN_MAX_SECONDS"]):
        task.apply_async(args, countdown=wait)


def _settings() -> dispatch.Settings:
    return dispatch.Settings.from_config(current_app.config)


def _stall() -> timedelta:
    return timedelta(seconds=float(current_app.config["DISPATCH_STALL_SECONDS"]))


def _send_due(campaign_id: str, first_id: int, last_id: int | None) -> None:
    """Claim, send and record the due deliveries of an id range, noting the progress."""
    settings = _settings()
    push = dispatch.transport(current_app)
    every = _stall() / PROGRESS_NOTES_PER_STALL
    after = first_id - 1
    while True:
        result = dispatch.process_chunk(
            db.session, push, campaign_id, settings, after_id=after, upto_id=last_id
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
    at = dispatch.due_at(db.session, campaign_id, first_id=first_id, last_id=last_id)
    _come_back(self, (campaign_id, first_id, last_id), at)
    dispatch.finish_if_done(db.session, campaign_id)


@shared_task(name="mobile_api.dispatch.sweep")
def sweep() -> None:
    """Resolve dead claims, queue one recovery of each stalled campaign, complete finished ones.

    A campaign whose tasks merely wait behind a long queue is not stalled while
    any of its chunks progresses; one that is gets at most one recovery at a time.
    """
    dispatch.resolve_interrupted(db.session, _settings())
    stall = _stall()
    now = utcnow()
    for campaign_id in dispatch.active_campaign_ids(db.session):
        due = dispatch.due_at(db.session, campaign_id, first_id=0)
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
        due = dispatch.due_at(db.session, campaign_id, first_id=0)
        dispatch.hold_recovery(db.session, campaign_id, due)
        _come_back(self, (campaign_id,), due)
    dispatch.finish_if_done(db.session, campaign_id)


@shared_task(name="mobile_api.periodic.run")
def run_periodic(name: str) -> None:
    """Run one registered periodic job (scheduled by Celery beat)."""
    periodic.run(name)
