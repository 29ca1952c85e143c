"""Periodic jobs, run by the embedded worker and by Celery beat from one registry."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """`target` ("module:function") is called without arguments inside an app context."""

    name: str
    every_seconds: float
    target: str


# The registration point: append a job here and both runners pick it up.
JOBS: list[PeriodicJob] = [
    # Erases accounts terminated PURGE_AFTER_DAYS ago and rows past their retention.
    PeriodicJob("privacy-purge", 3600, "mobile_api.services.privacy:run_purge"),
    # Idempotency-Keys are kept 24 h; older ones no longer count and are deleted.
    PeriodicJob(
        "idempotency-expiry", 3600, "mobile_api.services.notifications:expire_idempotency_keys"
    ),
]


def find(name: str) -> PeriodicJob:
    """The registered job of that name."""
    for job in JOBS:
        if job.name == name:
            return job
    raise KeyError(name)


def resolve(target: str) -> Callable[[], object]:
    """Import the callable a job names."""
    module, _, attribute = target.partition(":")
    function: Callable[[], object] = getattr(importlib.import_module(module), attribute)
    return function


def run(name: str) -> None:
    """Run one job now (the caller provides the app context)."""
    job = find(name)
    started = time.monotonic()
    resolve(job.target)()
    log.info("periodic job %s done in %.3f s", name, time.monotonic() - started)


class Schedule:
    """In-process schedule for the embedded worker: each job at most every N seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}

    def run_due(self) -> list[str]:
        """Run every job whose interval has passed (all of them on the first call)."""
        ran = []
        for job in list(JOBS):
            now = self._clock()
            last = self._last.get(job.name)
            if last is not None and now - last < job.every_seconds:
                continue
            self._last[job.name] = now
            try:
                run(job.name)
            except Exception:
                # One failing job must not stop the dispatcher; it is retried next interval.
                log.exception("periodic job %s failed", job.name)
            ran.append(job.name)
        return ran
