"""Waking the embedded notification lane when a notification is accepted (PostgreSQL).

The web server and the embedded dispatcher are different processes, often on different
hosts; what they share is the database. On PostgreSQL the transaction that accepts a
notification also sends a NOTIFY on one channel, which the database delivers when (and
only if) it commits; the lane LISTENs on a connection of its own and wakes at once
instead of at its next poll. Channels are per database, so deployments never hear each
other. SQLite has no such thing: there the lane finds the work at its next poll
(NOTIFY_POLL_SECONDS). With Celery the accepted notification's task wakes the lane.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from mobile_api.services import Db, is_postgresql

log = logging.getLogger(__name__)

CHANNEL = "mobile_api_notifications"
_NOTIFY = sa.text(f"NOTIFY {CHANNEL}")
# After a lost connection, how long the lane only polls before it listens again.
RECONNECT_SECONDS = 5.0
# A long poll interval is waited in slices this long, so a stop is not kept waiting.
_SLICE_SECONDS = 0.5


def announce(session: Db) -> None:
    """Wake the lane once this transaction commits (PostgreSQL; elsewhere nothing)."""
    if is_postgresql(session):
        session.execute(_NOTIFY)


class Listener:
    """The lane's ear: waits for an announcement or the poll interval, whichever is first.

    Use as a context manager; it holds one connection of `engine` for as long as it is
    open (PostgreSQL), none on SQLite. A lost connection is replaced later; meanwhile
    waits simply last the poll interval.
    """

    def __init__(self, engine: sa.Engine, stop: threading.Event) -> None:
        self._engine = engine
        self._stop = stop
        self._listens = engine.dialect.name == "postgresql"
        self._raw: Any = None
        self._retry_at = 0.0

    def __enter__(self) -> Listener:
        # Listening before the lane's first pass: what commits later is heard, what
        # committed earlier that pass finds.
        self._connection()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` (less once stopped); True if an announcement came."""
        connection = self._connection()
        if connection is None:
            self._stop.wait(seconds)
            return False
        until = time.monotonic() + seconds
        try:
            woken = False
            while not woken and not self._stop.is_set():
                left = until - time.monotonic()
                if left <= 0:
                    break
                woken = any(
                    True
                    for _ in connection.notifies(timeout=min(left, _SLICE_SECONDS), stop_after=1)
                )
            if woken:
                # Those that came meanwhile asked for the same: one pass serves them all.
                for _ in connection.notifies(timeout=0.0):
                    pass
        except Exception:
            log.warning("notification lane lost its LISTEN connection; polling", exc_info=True)
            self._close()
            self._retry_at = time.monotonic() + RECONNECT_SECONDS
            return False
        return woken

    def _connection(self) -> Any:
        """The psycopg connection listening on CHANNEL; None on SQLite or while it is down."""
        if not self._listens or self._stop.is_set():
            return None
        if self._raw is None and time.monotonic() >= self._retry_at:
            raw = None
            try:
                raw = self._engine.raw_connection()
                raw.driver_connection.autocommit = True  # type: ignore[union-attr]
                raw.driver_connection.execute(f"LISTEN {CHANNEL}")  # type: ignore[union-attr]
                self._raw = raw
            except Exception:
                if raw is not None:
                    raw.invalidate()  # half set up (autocommit, maybe listening): not for the pool
                log.warning("notification lane cannot LISTEN; polling", exc_info=True)
                self._retry_at = time.monotonic() + RECONNECT_SECONDS
                return None
        return None if self._raw is None else self._raw.driver_connection

    def _close(self) -> None:
        if self._raw is not None:
            # Not back into the pool: a connection that listens is nobody else's.
            self._raw.invalidate()
            self._raw = None
