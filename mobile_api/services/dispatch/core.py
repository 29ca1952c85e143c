"""What every job of the dispatcher shares: its settings, the push transport, the campaign lock."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Flask

from mobile_api import push as push_seam
from mobile_api.push import PushTransport
from mobile_api.services import Db, is_postgresql
from mobile_api.services.messaging import Cap, QuietHours, parse_caps
from models import Campaign, DeliveryStatus

log = logging.getLogger("mobile_api.services.dispatch")

INTERRUPTED = "interrupted"
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)


@dataclass(frozen=True, slots=True)
class Settings:
    """Dispatcher tuning, read from the app config."""

    chunk_size: int = 500
    enumerate_batch: int = 5000
    max_attempts: int = 0  # 0: no count limit, only the retry window
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    claim_lease_seconds: float = 30.0
    retry_window_seconds: float = 86400.0
    breaker_max_seconds: float = 30.0
    # v1.1, unset by default (v1 behaviour): the deployment's quiet hours for
    # promotional messages, and the frequency caps of promotional hand-offs.
    quiet_hours: QuietHours | None = None
    caps: tuple[Cap, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Settings from DISPATCH_* and PUSH_* config keys."""
        return cls(
            chunk_size=int(config["DISPATCH_CHUNK_SIZE"]),
            enumerate_batch=int(config["DISPATCH_ENUMERATE_BATCH"]),
            max_attempts=int(config["PUSH_MAX_ATTEMPTS"]),
            retry_base_seconds=float(config["PUSH_RETRY_BASE_SECONDS"]),
            retry_max_seconds=float(config["PUSH_RETRY_MAX_SECONDS"]),
            claim_lease_seconds=float(config["DISPATCH_CLAIM_LEASE_SECONDS"]),
            retry_window_seconds=float(config["PUSH_RETRY_WINDOW_SECONDS"]),
            breaker_max_seconds=float(config["PUSH_BREAKER_MAX_SECONDS"]),
            quiet_hours=QuietHours.parse(config.get("QUIET_HOURS")),
            caps=parse_caps(config.get("PROMO_FREQUENCY_CAP")),
        )


def transport(app: Flask, lane: str | None = None) -> PushTransport:
    """The app's push router, built once per process and lane (see mobile_api.push.transport)."""
    return push_seam.transport(app, lane)


def lock_campaign(session: Db, campaign_id: str, *, exclusive: bool) -> Campaign | None:
    """Start a transaction holding the campaign: shared for claims, exclusive to enumerate.

    Cancel updates the campaign row, so it waits for claims in progress and every
    claim after it sees the cancellation.
    """
    stmt = sa.select(Campaign).where(Campaign.id == campaign_id)
    if is_postgresql(session):
        stmt = stmt.with_for_update(read=not exclusive)
    else:
        # SQLite: write first, so this transaction holds the single write lock
        # (waiting up to busy_timeout) before it reads anything.
        session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(progress_at=Campaign.progress_at)
            .execution_options(synchronize_session=False)
        )
    return session.scalars(stmt.execution_options(populate_existing=True)).first()
