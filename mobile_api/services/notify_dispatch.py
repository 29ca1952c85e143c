"""The notification lane: claim due notification deliveries, hand them to FCM, record.

Notifications never wait behind a campaign: their deliveries live in their own table,
the embedded dispatcher works them in a thread of their own and Celery in a queue of
its own. The bookkeeping is the campaigns' (see services/dispatch.py): a claim commits
before the hand-off, so no row is handed over twice, and each device's deliverability
and consent to the category are read in the query that claims it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from mobile_api.push import Outcome, PushMessage, PushTransport, SendResult
from mobile_api.services import Db, dispatch, is_postgresql
from mobile_api.services import audience as aud
from models import (
    CampaignCategory,
    DeliveryStatus,
    Device,
    Notification,
    NotificationDelivery,
    utcnow,
)
from models.base import UTCDateTime

log = logging.getLogger(__name__)

_due = sa.and_(
    NotificationDelivery.status == DeliveryStatus.PENDING,
    NotificationDelivery.next_attempt_at <= sa.bindparam("now", type_=UTCDateTime()),
)


def next_due(session: Db) -> datetime | None:
    """When the earliest pending notification delivery may be tried; reads only."""
    value: datetime | None = session.scalar(
        sa.select(sa.func.min(NotificationDelivery.next_attempt_at)).where(
            NotificationDelivery.status == DeliveryStatus.PENDING
        )
    )
    session.commit()
    return value


def has_due(session: Db) -> bool:
    """Whether a delivery is due now; reads only, so an idle poll takes no write lock."""
    found = session.scalar(
        sa.select(sa.select(NotificationDelivery.id).where(_due).exists()), {"now": utcnow()}
    )
    session.commit()
    return bool(found)


def _consent_reason(category_key: Any) -> sa.ColumnElement[Any]:
    """Why the device's choices refuse this category now, or NULL."""
    # PROVISIONAL until the categories of branch `messaging` are merged.
    return sa.null()


def _message(row: Any) -> PushMessage:
    data = dict(row.data or {})
    if row.link:
        data["link"] = row.link
    return PushMessage(
        token=row.push_token,
        title=row.title,
        body=row.body,
        data=data,
        ttl_seconds=row.ttl_seconds,
        collapse_key=row.collapse_key,
        priority="high",
    )


def send_due(session: Db, push: PushTransport, settings: dispatch.Settings) -> int:
    """Claim up to a chunk of due deliveries, hand them over, record; rows claimed."""
    if not has_due(session):
        return 0
    now = utcnow()
    if not is_postgresql(session):
        # Write first, so this transaction holds SQLite's write lock before it reads.
        session.execute(
            sa.update(NotificationDelivery)
            .where(sa.false())
            .values(status=NotificationDelivery.status)
            .execution_options(synchronize_session=False)
        )
    reason = sa.case(
        (Device.id.is_(None), aud.ERASED),
        else_=sa.func.coalesce(
            aud.exclusion_reason(CampaignCategory.SERVICE),
            _consent_reason(Notification.category_key),
        ),
    ).label("reason")
    stmt = aud.with_terminations(
        sa.select(
            NotificationDelivery.id,
            NotificationDelivery.device_id,
            NotificationDelivery.attempts,
            Device.push_token,
            Notification.title,
            Notification.body,
            Notification.data,
            Notification.link,
            Notification.ttl_seconds,
            Notification.collapse_key,
            reason,
        )
        .select_from(NotificationDelivery)
        .join(Notification, Notification.id == NotificationDelivery.notification_id)
        .outerjoin(Device, Device.id == NotificationDelivery.device_id)
    )
    stmt = stmt.where(_due).order_by(NotificationDelivery.id).limit(settings.chunk_size)
    if is_postgresql(session):
        stmt = stmt.with_for_update(of=NotificationDelivery, skip_locked=True)
    rows = session.execute(stmt, {"now": now}).all()
    if not rows:
        session.commit()
        return 0
    to_send = [row for row in rows if row.reason is None]
    by_reason: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        if row.reason is not None:
            by_reason[row.reason].append(row.id)
    for why, ids in by_reason.items():
        _set(session, ids, status=DeliveryStatus.SUPPRESSED, reason=why, updated_at=now)
    if to_send:
        _set(
            session,
            [row.id for row in to_send],
            status=DeliveryStatus.SENDING,
            claimed_at=now,
            attempts=NotificationDelivery.attempts + 1,
            updated_at=now,
        )
    messages = [_message(row) for row in to_send]
    session.commit()  # the claim: from here on no other dispatcher takes these rows

    results: list[SendResult] = []
    for start in range(0, len(messages), push.max_batch):
        results += push.send(messages[start : start + push.max_batch])
    _record(session, to_send, results, settings)
    return len(rows)


def _set(session: Db, ids: list[int], **values: Any) -> None:
    session.execute(
        sa.update(NotificationDelivery)
        .where(NotificationDelivery.id.in_(ids))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _record(
    session: Db, rows: list[Any], results: list[SendResult], settings: dispatch.Settings
) -> None:
    """Write the outcome of a hand-off, in one transaction."""
    now = utcnow()
    updates: list[dict[str, Any]] = []
    pruned: list[dict[str, Any]] = []
    # send() keeps the order of messages, so result i belongs to row i.
    for row, result in zip(rows, results, strict=True):
        attempts = row.attempts + 1
        update = {
            "b_id": row.id,
            "b_status": DeliveryStatus.SENT,
            "b_reason": None,
            "b_next": now,
            "b_now": now,
        }
        if result.outcome == Outcome.RETRY and attempts < settings.max_attempts:
            delay = dispatch.backoff_seconds(attempts, result.retry_after, settings, dispatch._rng)
            update.update(
                b_status=DeliveryStatus.PENDING,
                b_reason=result.error,
                b_next=now + timedelta(seconds=delay),
            )
        elif result.outcome != Outcome.SENT:
            update.update(b_status=DeliveryStatus.FAILED, b_reason=result.error or "unknown")
            if result.outcome == Outcome.INVALID_TOKEN:
                pruned.append({"b_device": row.device_id, "b_token": row.push_token, "b_now": now})
        updates.append(update)
    table = cast(sa.Table, NotificationDelivery.__table__)
    if updates:
        session.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"), table.c.status == DeliveryStatus.SENDING)
            .values(
                status=sa.bindparam("b_status"),
                reason=sa.bindparam("b_reason"),
                next_attempt_at=sa.bindparam("b_next", type_=UTCDateTime()),
                updated_at=sa.bindparam("b_now", type_=UTCDateTime()),
                claimed_at=None,
            ),
            updates,
        )
    if pruned:
        devices = cast(sa.Table, Device.__table__)
        session.execute(
            sa.update(devices)
            .where(
                devices.c.id == sa.bindparam("b_device"),
                devices.c.push_token == sa.bindparam("b_token"),
            )
            .values(push_token_invalid_at=sa.bindparam("b_now", type_=UTCDateTime())),
            pruned,
        )
    session.commit()


def resolve_interrupted(session: Db, settings: dispatch.Settings) -> int:
    """Rows claimed longer than the lease ago belong to a dead dispatcher: failed, never re-sent."""
    cutoff = utcnow() - timedelta(seconds=settings.claim_lease_seconds)
    lapsed = (
        NotificationDelivery.claimed_at < cutoff,
        NotificationDelivery.status == DeliveryStatus.SENDING,
    )
    if not session.scalar(sa.select(sa.select(NotificationDelivery.id).where(*lapsed).exists())):
        session.commit()
        return 0
    result = session.execute(
        sa.update(NotificationDelivery)
        .where(*lapsed)
        .values(status=DeliveryStatus.FAILED, reason=dispatch.INTERRUPTED, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    count = int(result.rowcount)  # type: ignore[attr-defined]
    if count:
        log.warning("%s notification deliveries were interrupted mid-hand-off; not re-sent", count)
    return count


def drain(session: Db, push: PushTransport, settings: dispatch.Settings) -> int:
    """Send everything due now, chunk after chunk; rows claimed."""
    total = 0
    while claimed := send_due(session, push, settings):
        total += claimed
    return total
