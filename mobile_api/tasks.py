"""Celery: the app bound to Flask, and the dispatch tasks (the embedded worker's units of work)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery, Task, shared_task
from flask import Flask, current_app

from mobile_api import periodic
from mobile_api.extensions import db
from mobile_api.services import dispatch
from models import Campaign, utcnow

# A campaign whose enumeration or due deliveries saw no progress for this long has
# lost its task (a worker died before enqueueing the rest): the sweep re-enqueues it.
STALL = timedelta(seconds=60)
SWEEP_SECONDS = 30.0


def make_celery(app: Flask) -> Celery:
    """A Celery app whose tasks run inside `app`'s context; stored as app.extensions["celery"]."""

    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.import_name, task_cls=FlaskTask)
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


def _settings() -> dispatch.Settings:
    return dispatch.Settings.from_config(current_app.config)


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
    settings = _settings()
    push = dispatch.transport(current_app)
    after = first_id - 1
    while True:
        result = dispatch.process_chunk(
            db.session, push, campaign_id, settings, after_id=after, upto_id=last_id
        )
        if not result.claimed:
            break
        after = result.last_id or after
    due = dispatch.next_due(db.session, campaign_id, first_id, last_id)
    if due is not None:
        delay = max((due - utcnow()).total_seconds(), 0.0)
        self.apply_async((campaign_id, first_id, last_id), countdown=delay)
    dispatch.finish_if_done(db.session, campaign_id)


@shared_task(name="mobile_api.dispatch.sweep")
def sweep() -> None:
    """Resolve dead claims, re-enqueue stalled campaigns, complete finished ones."""
    settings = _settings()
    dispatch.resolve_interrupted(db.session, settings)
    now = utcnow()
    for campaign_id in dispatch.active_campaign_ids(db.session):
        campaign = db.session.get(Campaign, campaign_id)
        if campaign is None:
            continue
        last_progress = campaign.progress_at or campaign.queued_at or now
        if not campaign.enumeration_done and now - last_progress > STALL:
            dispatch_campaign.delay(campaign_id)
        due = dispatch.next_due(db.session, campaign_id)
        if due is not None and now - due > STALL:
            dispatch_chunk.delay(campaign_id, 0, None)
        dispatch.finish_if_done(db.session, campaign_id)


@shared_task(name="mobile_api.periodic.run")
def run_periodic(name: str) -> None:
    """Run one registered periodic job (scheduled by Celery beat)."""
    periodic.run(name)
