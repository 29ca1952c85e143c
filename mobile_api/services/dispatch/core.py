"""What every job of the dispatcher shares: its settings, the push transport, the campaign lock."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Flask

from mobile_api.push import FcmTransport, PushTransport, make_transport
from mobile_api.services import Db, is_postgresql
from mobile_api.services.messaging import Cap, QuietHours, parse_caps
from models import Campaign, Delivery, DeliveryStatus

log = logging.getLogger("mobile_api.services.dispatch")

INTERRUPTED = "interrupted"
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)


@dataclass(frozen=True, slots=True)
class Settings:
    """Dispatcher tuning, read from the app config."""

    chunk_size: int = 500
    enumerate_batch: int = 5000
    max_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    claim_lease_seconds: float = 600.0
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
            quiet_hours=QuietHours.parse(config.get("QUIET_HOURS")),
            caps=parse_caps(config.get("PROMO_FREQUENCY_CAP")),
        )


def transport(app: Flask) -> PushTransport:
    """The app's push transport, built once per process from FCM_* config (log without).

    A bad FCM_CREDENTIALS file raises here, so a dispatcher that builds it as it
    starts fails then, not at its first chunk. A forked pool process builds its own:
    connections and firebase-admin's state are not shared across a fork.
    """
    existing: PushTransport | None = app.extensions.get("push_transport")
    if existing is not None and app.extensions.get("push_transport_pid") in (None, os.getpid()):
        return existing
    path = app.config["FCM_CREDENTIALS"]
    try:
        built = make_transport(
            path,
            app.config["FCM_PROJECT_ID"],
            app.config["FCM_ENDPOINT"],
            float(app.config["FCM_TIMEOUT"]),
        )
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"FCM_CREDENTIALS {path!r} is not a usable service-account file: {exc}"
        ) from exc
    if isinstance(built, FcmTransport):
        log.info(
            "push transport: fcm (project %s, endpoint %s)",
            built.project_id,
            built.endpoint or "Google's",
        )
    else:
        log.info("push transport: %s", built.name)
    app.extensions["push_transport"] = built
    app.extensions["push_transport_pid"] = os.getpid()
    return built


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


def set_deliveries(session: Db, ids: list[int], **values: Any) -> None:
    """Set the same values on the delivery rows of `ids`."""
    session.execute(
        sa.update(Delivery)
        .where(Delivery.id.in_(ids))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
