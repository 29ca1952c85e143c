"""Transactional notifications: accepted once per Idempotency-Key, read with per-device outcomes.

Idempotency is decided by the database, not by a check-then-insert: the row of
`idempotency_keys` (primary key: API key, Idempotency-Key) is the first write of the
transaction that creates the notification. Of two requests racing with one key, in one
process or in two, exactly one inserts it; the other waits on that row until the first
commits (then answers what the first answered) or gives up after
NOTIFY_IDEMPOTENCY_WAIT_SECONDS (409 request_in_progress). A refused request rolls
back, key included, so it is not remembered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from mobile_api.errors import (
    IdempotencyKeyReused,
    NotFound,
    PromotionalCategoryNotAllowed,
    RequestInProgress,
    ServiceNotificationRequiresAdmin,
)
from mobile_api.push import INVALID_TOKEN_ERRORS
from mobile_api.services import Db, categories, export, is_postgresql
from mobile_api.services.caller import Caller
from models import (
    CategoryKind,
    DeliveryStatus,
    Device,
    IdempotencyKey,
    Notification,
    NotificationDelivery,
    NotificationStatus,
    new_id,
    utcnow,
)
from models.base import UTCDateTime

IDEMPOTENCY_TTL = timedelta(hours=24)
# What SQLite connections wait for a lock everywhere else (mobile_api._tune_engine).
_SQLITE_BUSY_TIMEOUT_MS = 10000


@dataclass(frozen=True, slots=True)
class Idempotency:
    """The Idempotency-Key of a request, scoped to the API key that sent it."""

    api_key_id: str
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """The notification a request is answered with; `created` False for a repeat."""

    notification: Notification
    created: bool


def fingerprint(body: Any) -> str:
    """SHA-256 of a parsed JSON body, serialised canonically (key order and spacing ignored)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_category(session: Db, key: str, caller: Caller) -> None:
    """Transactional categories for notify keys; service ones for admins; promotional never."""
    kind = categories.get(session, key).kind  # 422 unknown_category
    if kind == CategoryKind.PROMOTIONAL:
        raise PromotionalCategoryNotAllowed()
    if kind == CategoryKind.SERVICE and not caller.is_admin:
        raise ServiceNotificationRequiresAdmin()


def _earlier(session: Db, idempotency: Idempotency) -> Notification | None:
    """The notification an unexpired earlier use of the key made; 422 for another body."""
    row = session.get(IdempotencyKey, (idempotency.api_key_id, idempotency.key))
    if row is None or row.created_at < utcnow() - IDEMPOTENCY_TTL:
        return None
    if row.fingerprint != idempotency.fingerprint:
        raise IdempotencyKeyReused()
    return session.get(Notification, row.notification_id)


@contextlib.contextmanager
def _waiting_at_most(session: Db, seconds: float) -> Iterator[None]:
    """Bound how long this transaction waits for a lock another one holds."""
    milliseconds = max(1, math.ceil(seconds * 1000))
    if is_postgresql(session):
        # SET LOCAL ends with the transaction, whatever way it ends.
        session.execute(sa.text(f"SET LOCAL lock_timeout = {milliseconds}"))
        yield
        return
    connection = session.connection()
    connection.exec_driver_sql(f"PRAGMA busy_timeout = {milliseconds}")
    try:
        yield
    finally:
        # The connection goes back to the pool: give it back its usual patience.
        with contextlib.suppress(sa_exc.DBAPIError):
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")


def _lock_timed_out(error: sa_exc.OperationalError) -> bool:
    """A lock wait given up: PostgreSQL's lock_not_available, or SQLite's busy database."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate == "55P03" or "database is locked" in str(error.orig)


def _claim_key(session: Db, idempotency: Idempotency, notification_id: str) -> None:
    """Insert the key's row first: a racing twin waits here, before any other work."""
    now = utcnow()
    # An expired use of the key no longer counts: it makes room for this one.
    session.execute(
        sa.delete(IdempotencyKey).where(
            IdempotencyKey.api_key_id == idempotency.api_key_id,
            IdempotencyKey.key == idempotency.key,
            IdempotencyKey.created_at < now - IDEMPOTENCY_TTL,
        )
    )
    session.execute(
        sa.insert(IdempotencyKey).values(
            api_key_id=idempotency.api_key_id,
            key=idempotency.key,
            fingerprint=idempotency.fingerprint,
            notification_id=notification_id,
            created_at=now,
        )
    )


def _targets(data: Mapping[str, Any]) -> sa.ColumnElement[bool]:
    if data.get("account_id") is not None:
        return Device.account_id == data["account_id"]
    return Device.id.in_(sorted(set(data["device_ids"])))


def _create(session: Db, notification_id: str, data: Mapping[str, Any], caller: Caller) -> None:
    """Insert the notification and one pending delivery per target device."""
    now = utcnow()
    device_ids = data.get("device_ids")
    session.execute(
        sa.insert(Notification).values(
            id=notification_id,
            category_key=data["category_key"],
            title=data["title"],
            body=data["body"],
            content=dict(data.get("content") or {}),
            default_locale=data.get("default_locale"),
            data=dict(data.get("data") or {}),
            link=data.get("link"),
            image_url=data.get("image_url"),
            ttl_seconds=data.get("ttl_seconds"),
            collapse_key=data.get("collapse_key"),
            account_id=data.get("account_id"),
            device_ids=sorted(set(device_ids)) if device_ids is not None else None,
            devices=0,
            created_by=caller.actor,
            created_role=caller.role,
            created_at=now,
        )
    )
    targets = sa.select(
        sa.literal(notification_id, sa.String),
        Device.id,
        sa.literal(DeliveryStatus.PENDING.value, sa.String),
        sa.literal(0, sa.Integer),
        sa.literal(now, UTCDateTime()),
        sa.literal(now, UTCDateTime()),
    ).where(_targets(data))
    inserted = session.execute(
        sa.insert(NotificationDelivery)
        .from_select(
            ["notification_id", "device_id", "status", "attempts", "next_attempt_at", "updated_at"],
            targets,
        )
        .returning(NotificationDelivery.id)
    ).all()
    session.execute(
        sa.update(Notification)
        .where(Notification.id == notification_id)
        .values(devices=len(inserted))
    )


def accept(
    session: Db,
    data: Mapping[str, Any],
    caller: Caller,
    *,
    idempotency: Idempotency | None = None,
    wait_seconds: float = 5.0,
) -> Accepted:
    """Accept a notification for the dispatcher's notification lane, once per Idempotency-Key.

    A repeat of an earlier request (same key, equal body) gets the earlier notification
    and creates nothing; the same key with another body is refused (422).
    """
    if idempotency is not None:
        earlier = _earlier(session, idempotency)
        if earlier is not None:
            return Accepted(earlier, created=False)
    _check_category(session, data["category_key"], caller)
    # End the reads: SQLite must start the write below afresh, not upgrade a
    # snapshot another process may have moved past.
    session.rollback()
    notification_id = new_id()
    try:
        if idempotency is not None:
            with _waiting_at_most(session, wait_seconds):
                _claim_key(session, idempotency, notification_id)
        _create(session, notification_id, data, caller)
        session.commit()
    except sa_exc.IntegrityError:
        # A twin with the same key committed first: answer what it answered.
        session.rollback()
        if idempotency is None:
            raise
        earlier = _earlier(session, idempotency)
        if earlier is None:  # it expired or its notification was purged meanwhile
            raise RequestInProgress() from None
        return Accepted(earlier, created=False)
    except sa_exc.OperationalError as error:
        session.rollback()
        if idempotency is not None and _lock_timed_out(error):
            raise RequestInProgress() from None
        raise
    notification = session.get(Notification, notification_id)
    assert notification is not None
    return Accepted(notification, created=True)


def get(session: Db, notification_id: str, caller: Caller) -> Notification:
    """The notification, or 404; a notify key sees only what notify keys made."""
    notification = session.get(Notification, notification_id)
    if notification is None:
        raise NotFound()
    if not caller.is_admin and notification.created_role != caller.role:
        raise NotFound()
    return notification


def outcomes(session: Db, notification_id: str) -> list[NotificationDelivery]:
    """Every device's delivery row, in targeting order."""
    return list(
        session.scalars(
            sa.select(NotificationDelivery)
            .where(NotificationDelivery.notification_id == notification_id)
            .order_by(NotificationDelivery.id)
        )
    )


def status_of(rows: list[NotificationDelivery]) -> str:
    """queued, sending, completed or failed, from the devices' outcomes."""
    undecided = sum(r.status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING) for r in rows)
    if undecided:
        return NotificationStatus.QUEUED if undecided == len(rows) else NotificationStatus.SENDING
    statuses = {r.status for r in rows}
    if DeliveryStatus.FAILED in statuses and DeliveryStatus.SENT not in statuses:
        return NotificationStatus.FAILED
    return NotificationStatus.COMPLETED


def counts(rows: list[NotificationDelivery]) -> dict[str, Any]:
    """sent, failed, suppressed by reason, pending and invalid_tokens_pruned, as for campaigns."""
    totals: dict[str, Any] = {"sent": 0, "failed": 0, "pending": 0, "invalid_tokens_pruned": 0}
    suppressed: dict[str, int] = {}
    for row in rows:
        if row.status == DeliveryStatus.SUPPRESSED:
            suppressed[row.reason or "unknown"] = suppressed.get(row.reason or "unknown", 0) + 1
        elif row.status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING):
            totals["pending"] += 1
        else:
            totals[row.status] += 1
            if row.status == DeliveryStatus.FAILED and row.reason in INVALID_TOKEN_ERRORS:
                totals["invalid_tokens_pruned"] += 1
    totals["suppressed"] = suppressed
    return totals


def expire_idempotency_keys() -> int:
    """Delete Idempotency-Keys older than 24 h (a periodic job); how many went."""
    from mobile_api.extensions import db

    deleted = db.session.execute(
        sa.delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - IDEMPOTENCY_TTL)
    )
    db.session.commit()
    return int(deleted.rowcount)  # type: ignore[attr-defined]


@export.device_section("notifications")
def _export_notifications(session: Db, device: Device) -> list[dict[str, Any]]:
    """Every notification delivery kept for the device, with what it said, oldest first."""
    rows = session.execute(
        sa.select(NotificationDelivery, Notification)
        .join(Notification, Notification.id == NotificationDelivery.notification_id)
        .where(NotificationDelivery.device_id == device.id)
        .order_by(NotificationDelivery.id)
    )
    return [
        {
            "notification_id": notification.id,
            "category_key": notification.category_key,
            "title": notification.title,
            "body": notification.body,
            "status": delivery.status,
            "reason": delivery.reason,
            "updated_at": export.to_json(delivery.updated_at),
        }
        for delivery, notification in rows
    ]
