"""The hand-off of a claimed chunk: the deployment's send rate, and the claim's lease.

Why a lease renewed while working rather than dispatcher heartbeats: a chunk is
usually handed over in well under a third of the lease, so the lease costs no
write at all in the common case, needs no table of dispatchers, and guards exactly
the rows it names; only a hand-off that outlasts a third of it (FCM timing out,
the send rate making it wait) renews it, from a thread, as long as the process
lives. A killed dispatcher stops renewing, and within the lease the rows are
another dispatcher's to send (recovery.release_lapsed_claims).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import sqlalchemy as sa
from flask import Flask

from mobile_api.pacing import NoSlot, make_limiter
from mobile_api.push import APNS, APNS_SANDBOX, FCM, MAX_BATCH
from models import DeliveryStatus, utcnow

log = logging.getLogger("mobile_api.services.dispatch")

# Slots are reserved for a slice of messages at a time, a fifth of a second's worth.
_SLICES_PER_SECOND = 5
# A slot further away than this is not waited for: the rest of the chunk goes back
# to pending, never handed over, and is sent later (by whichever dispatcher).
_MAX_SLOT_WAIT_SECONDS = 10.0


class SendLimiter:
    """One provider's send rate for the whole deployment, as the geocoder's limit is shared.

    Each acquire reserves the next slot for `slice_size` messages, in Redis
    (deployment-wide) when REDIS_URL is set, else in a locked file every process
    of the host shares. Unreachable, it refuses rather than sending unthrottled.
    """

    def __init__(self, rate: float, redis_url: str | None, slot_file: str | None, key: str) -> None:
        if rate <= 0:
            raise ValueError("a push provider's MAX_MESSAGES_PER_SECOND must be positive")
        self.slice_size = max(1, min(MAX_BATCH, int(rate / _SLICES_PER_SECOND)))
        self._limiter = make_limiter(
            redis_url, self.slice_size / rate, key=key, slot_file=slot_file
        )

    def acquire(self) -> bool:
        """Wait for the next slot of `slice_size` messages; False if it cannot be had."""
        try:
            self._limiter.acquire(_MAX_SLOT_WAIT_SECONDS)
        except NoSlot:
            return False
        return True


# Each provider's rate setting: Google and Apple set their own limits. Both APNs
# hosts (production and sandbox) take APNs' rate, each with a slot of its own.
RATE_SETTINGS = {
    FCM: "FCM_MAX_MESSAGES_PER_SECOND",
    APNS: "APNS_MAX_MESSAGES_PER_SECOND",
    APNS_SANDBOX: "APNS_MAX_MESSAGES_PER_SECOND",
}


@dataclass(frozen=True, slots=True)
class SendPacing:
    """The send rates of the providers that have one: provider → its limiter."""

    limiters: Mapping[str, SendLimiter]


def send_limiter(app: Flask) -> SendPacing | None:
    """The app's send rates by provider (None when no provider has one), built once."""
    existing: SendPacing | None = app.extensions.get("push_send_pacing")
    if existing is not None:
        return existing
    limiters: dict[str, SendLimiter] = {}
    for provider, setting in RATE_SETTINGS.items():
        rate = app.config.get(setting)
        if not rate:
            continue
        # FCM's slot keeps its name (and FCM_LIMITER_FILE) from before APNs had one.
        slot_file = app.config.get("FCM_LIMITER_FILE") if provider == FCM else None
        limiters[provider] = SendLimiter(
            float(rate),
            app.config.get("REDIS_URL"),
            slot_file or os.path.join(app.instance_path, f"{provider.replace('_', '-')}-slot"),
            f"{app.config['CELERY_QUEUE']}:{provider.replace('_', '-')}-send-slot",
        )
    if not limiters:
        return None
    existing = SendPacing(limiters)
    app.extensions["push_send_pacing"] = existing
    return existing


class LeaseKeeper:
    """Renews the claim of rows being handed over, every third of the lease, from a thread.

    `table`: the delivery rows' table (campaign or notification deliveries).
    `fence` maps each row id to the attempts value its claim set: a row another
    dispatcher has taken over since (its lease lapsed) is left alone.
    """

    def __init__(
        self, engine: sa.Engine, table: sa.Table, fence: dict[int, int], lease_seconds: float
    ) -> None:
        self._engine = engine
        self._table = table
        self._groups: dict[int, list[int]] = defaultdict(list)
        for row_id, attempts in fence.items():
            self._groups[attempts].append(row_id)
        self._every = lease_seconds / 3
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        if self._groups and self._every > 0:
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.renew()
            except sa.exc.SQLAlchemyError:
                # The next renewal may get through; if none does, the lease lapses
                # and the chunk is sent again, with the same collapse identity.
                log.warning("could not renew a claim's lease", exc_info=True)

    def renew(self) -> None:
        """Push the lease of the rows still ours forward to now."""
        now = utcnow()
        table = self._table
        with self._engine.begin() as conn:
            for attempts, ids in self._groups.items():
                conn.execute(
                    sa.update(table)
                    .where(
                        table.c.id.in_(ids),
                        table.c.status == DeliveryStatus.SENDING,
                        table.c.attempts == attempts,
                    )
                    .values(claimed_at=now)
                )
