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

import collections
import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

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
from mobile_api.services import Db, categories, erasure, export, is_postgresql, notify_wakeup
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
    """The answer to POST /v1/notifications; `created` False for a repeat of an earlier one."""

    id: str
    status: str
    devices: int
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


_keys = cast(sa.Table, IdempotencyKey.__table__)
_notifications = cast(sa.Table, Notification.__table__)
_deliveries = cast(sa.Table, NotificationDelivery.__table__)
_devices = cast(sa.Table, Device.__table__)

# Built once: every accepted notification runs these, and SQLAlchemy's statement
# cache still pays for building a statement anew on each call.
_EARLIER_USE = sa.select(_keys.c.fingerprint, _keys.c.notification_id, _keys.c.created_at).where(
    _keys.c.api_key_id == sa.bindparam("api_key_id"), _keys.c.key == sa.bindparam("key")
)
_OUTCOME_TALLY = (
    sa.select(_deliveries.c.status, sa.func.count().label("n"))
    .where(_deliveries.c.notification_id == sa.bindparam("notification_id"))
    .group_by(_deliveries.c.status)
)
_FORGET_EXPIRED_USE = sa.delete(_keys).where(
    _keys.c.api_key_id == sa.bindparam("api_key_id"),
    _keys.c.key == sa.bindparam("key"),
    _keys.c.created_at < sa.bindparam("expired_before", type_=UTCDateTime()),
)
_CLAIM_KEY = sa.insert(_keys)
_INSERT_NOTIFICATION = sa.insert(_notifications)


def _targets_insert(target: sa.ColumnElement[bool]) -> sa.Insert:
    """One pending delivery per device matching `target`, returning their ids."""
    now = sa.bindparam("now", type_=UTCDateTime())
    page = sa.select(
        sa.bindparam("notification_id", type_=sa.String),
        _devices.c.id,
        sa.literal(DeliveryStatus.PENDING.value, sa.String),
        sa.literal(0, sa.Integer),
        now,
        now,
    ).where(target)
    columns = ["notification_id", "device_id", "status", "attempts", "next_attempt_at"]
    return (
        sa.insert(_deliveries)
        .from_select([*columns, "updated_at"], page)
        .returning(_deliveries.c.id)
    )


_TO_ACCOUNT = _targets_insert(_devices.c.account_id == sa.bindparam("account_id"))
_TO_DEVICES = _targets_insert(_devices.c.id.in_(sa.bindparam("device_ids", expanding=True)))


def _answer(session: Db, notification_id: str, *, created: bool) -> Accepted:
    """A notification's current status and device count, from its deliveries."""
    tally = {
        row.status: row.n
        for row in session.execute(_OUTCOME_TALLY, {"notification_id": notification_id})
    }
    return Accepted(notification_id, _status(tally), sum(tally.values()), created)


def _earlier(session: Db, idempotency: Idempotency) -> tuple[Accepted | None, bool]:
    """The answer of an unexpired earlier use of the key (422 for another body), and
    whether an expired use is in the way."""
    row = session.execute(
        _EARLIER_USE, {"api_key_id": idempotency.api_key_id, "key": idempotency.key}
    ).first()
    if row is None:
        return None, False
    if row.created_at < utcnow() - IDEMPOTENCY_TTL:
        return None, True
    if row.fingerprint != idempotency.fingerprint:
        raise IdempotencyKeyReused()
    return _answer(session, row.notification_id, created=False), False


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


def _claim_key(
    session: Db, idempotency: Idempotency, notification_id: str, *, expired: bool
) -> None:
    """Insert the key's row first: a racing twin waits here, before any other work."""
    now = utcnow()
    keyed = {"api_key_id": idempotency.api_key_id, "key": idempotency.key}
    if expired:
        # An expired use of the key no longer counts: it makes room for this one.
        session.execute(_FORGET_EXPIRED_USE, {**keyed, "expired_before": now - IDEMPOTENCY_TTL})
    session.execute(
        _CLAIM_KEY,
        {
            **keyed,
            "fingerprint": idempotency.fingerprint,
            "notification_id": notification_id,
            "created_at": now,
        },
    )


def _create(session: Db, notification_id: str, data: Mapping[str, Any], caller: Caller) -> int:
    """Insert the notification and one pending delivery per target device; how many."""
    now = utcnow()
    device_ids = sorted(set(data["device_ids"])) if data.get("device_ids") is not None else None
    session.execute(
        _INSERT_NOTIFICATION,
        {
            "id": notification_id,
            "category_key": data["category_key"],
            "title": data["title"],
            "body": data["body"],
            "content": dict(data.get("content") or {}),
            "default_locale": data.get("default_locale"),
            "data": dict(data.get("data") or {}),
            "link": data.get("link"),
            "image_url": data.get("image_url"),
            "ttl_seconds": data.get("ttl_seconds"),
            "collapse_key": data.get("collapse_key"),
            "account_id": data.get("account_id"),
            "device_ids": device_ids,
            "created_by": caller.actor,
            "created_role": caller.role,
            "created_at": now,
        },
    )
    params: dict[str, Any] = {"notification_id": notification_id, "now": now}
    if device_ids is None:
        inserted = session.execute(_TO_ACCOUNT, {**params, "account_id": data["account_id"]})
    else:
        inserted = session.execute(_TO_DEVICES, {**params, "device_ids": device_ids})
    return len(inserted.all())


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
    expired = False
    if idempotency is not None:
        earlier, expired = _earlier(session, idempotency)
        if earlier is not None:
            session.commit()
            return earlier
    _check_category(session, data["category_key"], caller)
    if not is_postgresql(session):
        # End the reads: SQLite must start the write below afresh, not upgrade a
        # snapshot another process may have moved past. (PostgreSQL takes a new
        # snapshot for every statement at READ COMMITTED.)
        session.rollback()
    notification_id = new_id()
    try:
        if idempotency is not None:
            with _waiting_at_most(session, wait_seconds):
                _claim_key(session, idempotency, notification_id, expired=expired)
        devices = _create(session, notification_id, data, caller)
        if devices:
            notify_wakeup.announce(session)  # delivered with the commit, not before
        session.commit()
    except sa_exc.IntegrityError:
        # A twin with the same key committed first: answer what it answered.
        session.rollback()
        if idempotency is None:
            raise
        earlier, _ = _earlier(session, idempotency)
        session.commit()
        if earlier is None:  # it expired meanwhile
            raise RequestInProgress() from None
        return earlier
    except sa_exc.OperationalError as error:
        session.rollback()
        if idempotency is not None and _lock_timed_out(error):
            raise RequestInProgress() from None
        raise
    status = NotificationStatus.QUEUED if devices else NotificationStatus.COMPLETED
    return Accepted(notification_id, status, devices, created=True)


def get(session: Db, notification_id: str, caller: Caller) -> Notification:
    """The notification, or 404; a notify key sees only what notify keys made."""
    notification = session.get(Notification, notification_id)
    # Another role's notification is answered as if it did not exist.
    if notification is None or (not caller.is_admin and notification.created_role != caller.role):
        raise NotFound("No such notification.")
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


def _status(tally: Mapping[str, int]) -> str:
    """queued, sending, completed or failed, from the number of deliveries in each status."""
    undecided = tally.get(DeliveryStatus.PENDING, 0) + tally.get(DeliveryStatus.SENDING, 0)
    if undecided:
        everything = sum(tally.values())
        return NotificationStatus.QUEUED if undecided == everything else NotificationStatus.SENDING
    if tally.get(DeliveryStatus.FAILED) and not tally.get(DeliveryStatus.SENT):
        return NotificationStatus.FAILED
    return NotificationStatus.COMPLETED


def status_of(rows: list[NotificationDelivery]) -> str:
    """queued, sending, completed or failed, from the devices' outcomes."""
    return _status(collections.Counter(row.status for row in rows))


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
            "attempts": delivery.attempts,
            "updated_at": export.to_json(delivery.updated_at),
        }
        for delivery, notification in rows
    ]


@erasure.scrubber("notifications", "account_id")
def _scrub_accounts(
    session: Db,
    device_ids: Sequence[str],
    account_ids: Sequence[str],
    hash_id: Callable[[str], str],
) -> None:
    """An erased account's notifications keep only the keyed hash of its id."""
    for account_id in account_ids:
        session.execute(
            sa.update(Notification)
            .where(Notification.account_id == account_id)
            .values(account_id=hash_id(account_id))
            .execution_options(synchronize_session=False)
        )


@erasure.scrubber("notifications", "device_ids")
def _scrub_devices(
    session: Db,
    device_ids: Sequence[str],
    account_ids: Sequence[str],
    hash_id: Callable[[str], str],
) -> None:
    """Erased devices named in a notification's device_ids become their keyed hashes."""
    erased = set(device_ids)
    if not erased:
        return
    # Their delivery rows may already be unlinked (erasure goes children first), so the
    # notifications are found by the ids in their JSON text.
    listing = sa.cast(Notification.device_ids, sa.Text)
    named = session.execute(
        sa.select(Notification.id, Notification.device_ids).where(
            sa.or_(*(listing.like(f'%"{device_id}"%') for device_id in sorted(erased)))
        )
    ).all()
    for notification_id, listed in named:
        session.execute(
            sa.update(Notification)
            .where(Notification.id == notification_id)
            .values(device_ids=[hash_id(d) if d in erased else d for d in listed])
            .execution_options(synchronize_session=False)
        )
