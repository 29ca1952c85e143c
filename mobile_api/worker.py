"""The embedded dispatcher: `flask --app wsgi dispatch worker` (no broker needed)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime
from types import FrameType

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from mobile_api import healthcheck, periodic, priority
from mobile_api.extensions import db
from mobile_api.services import dispatch, notify_dispatch, notify_wakeup
from models import utcnow

log = logging.getLogger(__name__)

# Chunks one campaign may claim in a pass before the next campaign gets a turn.
CHUNKS_PER_TURN = 20


class Worker:
    """Sends queued campaigns, resumes unfinished ones, runs the periodic jobs."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.settings = dispatch.Settings.from_config(app.config)
        self.poll_seconds = float(app.config["DISPATCH_POLL_SECONDS"])
        self.schedule = periodic.Schedule()
        self._stop = threading.Event()
        self._next_at: datetime | None = None
        self.notify_poll_seconds = float(app.config["NOTIFY_POLL_SECONDS"])
        self.campaign_nice = int(app.config["DISPATCH_CAMPAIGN_NICE"])

    def stop(self) -> None:
        """Finish the chunk in hand, then return from run()."""
        self._stop.set()

    def run_notifications(self) -> int:
        """Send every notification delivery due now; rows claimed."""
        with self.app.app_context():
            try:
                push = dispatch.transport(self.app, notify_dispatch.LANE)
                notify_dispatch.release_lapsed_claims(db.session, self.settings)
                limiter = dispatch.send_limiter(self.app)
                return notify_dispatch.drain(db.session, push, self.settings, limiter)
            except Exception:
                # As for campaigns: a database hiccup is retried on the next poll.
                log.exception("notification pass failed")
                db.session.rollback()
                return 0
            finally:
                db.session.remove()

    def _notification_lane(self) -> None:
        """Notifications in a thread of their own: never behind a campaign's chunks.

        Between passes it waits for the next poll, or less: PostgreSQL announces
        each accepted notification (services/notify_wakeup.py).
        """
        with self.app.app_context():
            engine = db.engine
        with notify_wakeup.Listener(engine, self._stop) as listener:
            while not self._stop.is_set():
                if not self.run_notifications():
                    listener.wait(self.notify_poll_seconds)

    def run_pass(self) -> tuple[int, int]:
        """One pass over the campaigns due now: (chunks claimed, campaigns still active)."""
        with self.app.app_context():
            push = dispatch.transport(self.app)
            limiter = dispatch.send_limiter(self.app)
            # Chunks whose dispatcher died (lease lapsed) are due again at once.
            dispatch.release_lapsed_claims(db.session, self.settings)
            chunks = 0
            # Only what the scheduling contract says is due: a campaign waiting for
            # retries, or behind its open circuit breaker, is not touched, so
            # polling it never writes.
            plan = dispatch.agenda(db.session, settings=self.settings)
            for campaign_id in plan.due:
                if self._stop.is_set():
                    break
                try:
                    chunks += dispatch.run_campaign(
                        db.session,
                        push,
                        campaign_id,
                        self.settings,
                        max_chunks=CHUNKS_PER_TURN,
                        limiter=limiter,
                    )
                except Exception:
                    # A database hiccup must not stop the dispatcher: the campaign is
                    # retried on the next pass (a chunk caught mid-hand-off stays
                    # claimed until its lease lapses, then is sent again).
                    log.exception("campaign %s: dispatch pass failed", campaign_id)
                    db.session.rollback()
            self.schedule.run_due()
            remaining = len(dispatch.active_campaign_ids(db.session))
            # Being handed over counts too: a hand-off that fails comes back pending.
            remaining += notify_dispatch.unfinished(db.session)
            self._next_at = plan.next_at
            db.session.remove()
        return chunks, remaining

    def _idle_seconds(self) -> float:
        """Seconds to wait before the next pass: the poll interval, less if work is due sooner."""
        if self._next_at is None:
            return self.poll_seconds
        until = (self._next_at - utcnow()).total_seconds()
        return min(self.poll_seconds, max(until, 0.0))

    def _campaigns(self, drain: bool, failed: list[BaseException]) -> None:
        """Campaign passes until stopped (or drained), at the campaigns' lower priority."""
        priority.lower_this_thread(self.campaign_nice)
        try:
            while not self._stop.is_set():
                chunks, remaining = self.run_pass()
                healthcheck.beat(self.app.config["HEARTBEAT_FILE"])  # this loop is alive
                if drain and remaining == 0:
                    return
                if not chunks:
                    self._stop.wait(self._idle_seconds())
        except BaseException as error:  # re-raised by run(), in the caller's thread
            failed.append(error)

    def run(self, *, drain: bool = False) -> None:
        """Loop until stopped (or, with drain, until no campaign is queued or sending).

        Campaigns and notifications each run in a thread of their own, campaigns at
        DISPATCH_CAMPAIGN_NICE: a notification neither waits behind a chunk nor for
        a core the campaign holds.
        """
        log.info("dispatcher started (%s)", "drain" if drain else "worker")
        lane = threading.Thread(target=self._notification_lane, name="notifications", daemon=True)
        failed: list[BaseException] = []
        campaigns = threading.Thread(
            target=self._campaigns, args=(drain, failed), name="campaigns", daemon=True
        )
        lane.start()
        campaigns.start()
        try:
            campaigns.join()
        finally:
            stopped = self._stop.is_set()
            self._stop.set()
            campaigns.join()
            lane.join()
            if not stopped:
                self._stop.clear()  # drained: tell the caller it finished, not that it timed out
        if failed:
            raise failed[0]
        log.info("dispatcher stopped")


dispatch_cli = AppGroup("dispatch", help="Send push campaigns without a broker.")


@dispatch_cli.command("worker")
def worker_command() -> None:
    """Run the embedded dispatcher until SIGTERM/SIGINT."""
    worker = Worker(current_app._get_current_object())  # type: ignore[attr-defined]

    def _graceful(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping after the current chunk", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    worker.run()


@dispatch_cli.command("drain")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def drain_command(timeout: float | None) -> None:
    """Send every queued or unfinished campaign, then exit (scripts, tests)."""
    worker = Worker(current_app._get_current_object())  # type: ignore[attr-defined]
    timer = threading.Timer(timeout, worker.stop) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    started = time.monotonic()
    worker.run(drain=True)
    click.echo(f"drained in {time.monotonic() - started:.1f} s")
