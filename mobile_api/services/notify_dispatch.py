"""The notification lane: claim due notification deliveries, hand them to FCM, record.

Notifications never wait behind a campaign: their deliveries live in their own table,
the embedded dispatcher works them in a thread of their own and Celery in a queue of
its own. The bookkeeping is the campaigns' own code (services/dispatch/ledger.py): a
claim commits before the hand-off under a lease renewed while it works, answers are
recorded fenced by the claim, retryable ones are retried until the retry window (or
the notification's TTL, if shorter) from its creation has passed, the deployment's
send rate is shared with campaigns, and a dead dispatcher's claims are released and
handed over again with the same collapse identity. Each device's deliverability and
consent to the category are read in the query that claims it, at every hand-off.
A notification's TTL counts from its creation (it is due at once): every hand-off,
retries included, carries what was left of it when its claim was taken, and one whose
TTL had run out by then is not sent but suppressed `expired` (a wait for the send
rate after the claim is not taken off).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from mobile_api.push import PushMessage, PushTransport
from mobile_api.services import Db, categories, dispatch, is_postgresql, messaging
from mobile_api.services import audience as aud
from mobile_api.services.dispatch import breaker, ledger
from models import (
    Category,
    DeliveryStatus,
    Device,
    Notification,
    NotificationDelivery,
    utcnow,
)
from models.base import UTCDateTime

log = logging.getLogger(__name__)

LANE = "notifications"  # its push transport is its own (see dispatch.transport)
TABLE = cast(sa.Table, NotificationDelivery.__table__)

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


def unfinished(session: Db) -> bool:
    """Whether a delivery is still pending or being handed over; reads only."""
    found = session.scalar(
        sa.select(
            sa.select(NotificationDelivery.id)
            .where(NotificationDelivery.status.in_(dispatch.UNFINISHED))
            .exists()
        )
    )
    session.commit()
    return bool(found)


def has_due(session: Db) -> bool:
    """Whether a delivery is due now; reads only, so an idle poll takes no write lock."""
    found = session.scalar(
        sa.select(sa.select(NotificationDelivery.id).where(_due).exists()), {"now": utcnow()}
    )
    session.commit()
    return bool(found)


def collapse_id(row: Any) -> str:
    """The notification's identity on a device, the same at every hand-off of it.

    Its collapse key when it has one (a newer notification with the same key
    replaces an older one), else its id.
    """
    return str(row.collapse_key or row.notification_id)


def _expired(row: Any, now: datetime) -> bool:
    """Whether the row's TTL ran out before this claim.

    A TTL of 0 means "now or never" to FCM and APNs: it gets its first hand-off.
    """
    if row.ttl_seconds is None:
        return False
    if row.ttl_seconds == 0:
        return bool(row.attempts > 0)
    return bool(now >= row.created_at + timedelta(seconds=row.ttl_seconds))


def _message(row: Any, category: Category, now: datetime) -> PushMessage:
    """The message for one claimed row: its language, remaining TTL, category, rich content."""
    key = messaging.content_key(row.content, row.locale)
    text = row.content[key] if row.content and key else None
    data = dict(row.data or {})
    if row.link:
        data["link"] = row.link  # apps that read only data find it too
    return PushMessage(
        token=row.push_token,
        provider=row.push_provider,
        title=text["title"] if text else row.title,
        body=text["body"] if text else row.body,
        data=data,
        ttl_seconds=_remaining_ttl(row, now),
        collapse_key=row.collapse_key,
        priority="high",
        android_channel_id=category.android_channel_id,
        ios_interruption_level=category.ios_interruption_level,
        image_url=row.image_url,
        collapse_id=collapse_id(row),
    )


def _remaining_ttl(row: Any, now: datetime) -> int | None:
    """What is left at `now` of the TTL that started when the notification was created."""
    left = messaging.remaining_ttl(row.ttl_seconds, row.created_at, now)
    return None if left is None else max(left, 0)


def _claimable(session: Db, category: Category, now: datetime, limit: int) -> list[Any]:
    """Due rows of notifications of one category, with why each may not be sent now."""
    # The device's state and its choice for the category are read here, in the
    # query that claims the row: the consent that counts is the one at hand-off.
    reason = sa.case(
        (Device.id.is_(None), aud.ERASED),
        else_=aud.exclusion_reason(categories.rule(category)),
    ).label("reason")
    stmt = aud.with_terminations(
        sa.select(
            NotificationDelivery.id,
            NotificationDelivery.device_id,
            NotificationDelivery.attempts,
            NotificationDelivery.notification_id,
            Notification.created_at,
            Device.push_token,
            Device.push_provider,
            Device.locale,
            Notification.title,
            Notification.body,
            Notification.content,
            Notification.data,
            Notification.link,
            Notification.image_url,
            Notification.ttl_seconds,
            Notification.collapse_key,
            reason,
        )
        .select_from(NotificationDelivery)
        .join(Notification, Notification.id == NotificationDelivery.notification_id)
        .outerjoin(Device, Device.id == NotificationDelivery.device_id)
    )
    stmt = (
        stmt.where(_due, Notification.category_key == category.key)
        .order_by(NotificationDelivery.id)
        .limit(limit)
    )
    if is_postgresql(session):
        stmt = stmt.with_for_update(of=NotificationDelivery, skip_locked=True)
    return list(session.execute(stmt, {"now": now}).all())


def send_due(
    session: Db,
    push: PushTransport,
    settings: dispatch.Settings,
    limiter: dispatch.SendPacing | None = None,
) -> int:
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
    # Each category has its own consent rule: one claim query per category due.
    due_categories = session.scalars(
        sa.select(Category)
        .where(
            Category.key.in_(
                sa.select(Notification.category_key)
                .join(NotificationDelivery)
                .where(_due)
                .distinct()
            )
        )
        .order_by(Category.key),
        {"now": now},
    ).all()
    rows: list[Any] = []
    to_send: list[Any] = []
    expired: list[int] = []
    messages: list[PushMessage] = []
    for category in due_categories:
        claimable = _claimable(session, category, now, settings.chunk_size - len(rows))
        rows += claimable
        for row in claimable:
            if row.reason is not None:
                continue
            if _expired(row, now):
                expired.append(row.id)
                continue
            to_send.append(row)
            messages.append(_message(row, category, now))
        if len(rows) >= settings.chunk_size:
            break
    if not rows:
        session.commit()
        return 0
    candidates = to_send
    # Rows of a provider whose circuit breaker is open wait for it, as campaigns' do.
    to_send, gate = breaker.admit(session, TABLE, candidates, now, settings)
    admitted = {row.id for row in to_send}
    messages = [m for row, m in zip(candidates, messages, strict=True) if row.id in admitted]
    refused = ledger.refused(rows, {messaging.EXPIRED: expired} if expired else None)
    ledger.claim(session, TABLE, to_send, refused, now)
    session.commit()  # the claim: from here on no other dispatcher takes these rows

    with ledger.leased(session, TABLE, to_send, settings.claim_lease_seconds):
        results = ledger.hand_off(session, TABLE, push, to_send, messages, limiter)
    decided = ledger.decide(to_send, results, settings, lambda row: _deadline(row, settings))
    ledger.write(session, TABLE, decided)
    session.commit()
    breaker.update(session, gate, to_send, results, settings)
    return len(rows)


def _deadline(row: Any, settings: dispatch.Settings) -> datetime:
    """Until when a notification is retried: from its creation, the window or its TTL."""
    return ledger.retry_deadline(row.created_at, row.ttl_seconds, settings)


def release_lapsed_claims(session: Db, settings: dispatch.Settings) -> int:
    """Give the rows of dead dispatchers (lease lapsed) back to be sent; how many.

    As for campaigns (dispatch.release_lapsed_claims): pending again, due now, so
    consent is read again at the next hand-off, which carries the same collapse
    identity as the first; the row is counted by the outcome of its last hand-off.
    """
    now = utcnow()
    lapsed = ledger.lapsed(TABLE, settings, now)
    if not ledger.any_lapsed(session, TABLE, lapsed):
        return 0
    count = len(ledger.release(session, TABLE, lapsed, now))
    session.commit()
    if count:
        log.warning(
            "claims of a dead dispatcher lapsed: %s notification deliveries to send again", count
        )
    return count


def drain(
    session: Db,
    push: PushTransport,
    settings: dispatch.Settings,
    limiter: dispatch.SendPacing | None = None,
) -> int:
    """Send everything due now, chunk after chunk; rows claimed."""
    total = 0
    while claimed := send_due(session, push, settings, limiter):
        total += claimed
    return total
