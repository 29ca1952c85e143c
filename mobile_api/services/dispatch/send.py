"""Claim, send, record: one chunk of due deliveries handed to the push service.

1. `process_chunk` claims up to `chunk_size` due `pending` rows in one transaction,
   reading each device's current deliverability in the query that selects them: rows
   that are no longer deliverable become `suppressed` with the reason, the rest
   `sending`. The claim commits *before* the hand-off, so a concurrent dispatcher
   never takes those rows too (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the claim
   runs under the database's single write lock).
2. The results are recorded in one transaction: `sent`, `failed` (with the reason;
   dead tokens are marked invalid), or back to `pending` with a back-off for
   retryable errors.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from mobile_api.push import Outcome, PushMessage, PushTransport, SendResult
from mobile_api.services import Db, campaigns, categories, is_postgresql
from mobile_api.services import audience as aud
from mobile_api.services import messaging as rules
from models import (
    Campaign,
    CampaignCategory,
    CampaignStatus,
    Category,
    Delivery,
    DeliveryStatus,
    Device,
    utcnow,
)
from models.base import UTCDateTime

from . import gates
from .core import UNFINISHED, Settings, lock_campaign, log, set_deliveries
from .enumerate import enumerate_batch


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What one claim-send-record cycle did."""

    claimed: int = 0
    last_id: int | None = None


def _message(campaign: Campaign, category: Category | None, row: Any, now: datetime) -> PushMessage:
    """The message for one claimed row: its language, remaining TTL, category and rich content."""
    key = rules.content_key(campaign.content, row.locale)
    text = campaign.content[key] if campaign.content and key else None
    ttl = rules.remaining_ttl(campaign.ttl_seconds, row.due_at, now)
    return PushMessage(
        token=row.push_token,
        title=text["title"] if text else campaign.title,
        body=text["body"] if text else campaign.body,
        data=dict(campaign.data or {}),
        ttl_seconds=None if ttl is None else max(ttl, 0),
        collapse_key=campaign.collapse_key,
        priority="high" if campaign.priority == "high" else "normal",
        android_channel_id=category.android_channel_id if category else None,
        ios_interruption_level=category.ios_interruption_level if category else None,
        image_url=campaign.image_url,
        sound=campaign.sound,
        badge=campaign.badge,
    )


def _start_sending(session: Db, campaign_id: str, now: datetime) -> None:
    """A scheduled campaign becomes `sending` once its first delivery is due (own transaction).

    Not inside a claim: claims hold the campaign row shared, and two of them
    upgrading it to write it would deadlock.
    """
    due = (
        sa.select(Delivery.id)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at <= now,
        )
        .exists()
    )
    session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.SCHEDULED, due)
        .values(status=CampaignStatus.SENDING)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def backoff_seconds(
    attempts: int, retry_after: float | None, settings: Settings, rng: random.Random
) -> float:
    """Exponential back-off with full jitter, never sooner than the server's Retry-After."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempts - 1))
    return max(rng.uniform(ceiling / 2, ceiling), retry_after or 0.0)


_rng = random.Random()  # noqa: S311 - jitter, not a secret


def process_chunk(
    session: Db,
    push: PushTransport,
    campaign_id: str,
    settings: Settings,
    *,
    after_id: int = 0,
    upto_id: int | None = None,
) -> ChunkResult:
    """Claim the next due pending deliveries (id > after_id), hand them to FCM, record."""
    now = utcnow()
    campaign = lock_campaign(session, campaign_id, exclusive=False)
    if campaign is not None and campaign.status == CampaignStatus.SCHEDULED:
        session.commit()
        _start_sending(session, campaign_id, now)
        campaign = lock_campaign(session, campaign_id, exclusive=False)
    if campaign is None or campaign.status != CampaignStatus.SENDING:
        session.commit()
        return ChunkResult()
    category = session.get(Category, campaign.category_key)
    # The device's state is read here, in the query that selects the chunk.
    rule = categories.rule(category) if category is not None else campaign.category
    reason = sa.case((Device.id.is_(None), aud.ERASED), else_=aud.exclusion_reason(rule)).label(
        "reason"
    )
    stmt = aud.with_terminations(
        sa.select(
            Delivery.id,
            Delivery.device_id,
            Delivery.attempts,
            Delivery.due_at,
            Device.push_token,
            Device.locale,
            Device.timezone,
            Device.quiet_hours_start,
            Device.quiet_hours_end,
            reason,
        )
        .select_from(Delivery)
        .outerjoin(Device, Device.id == Delivery.device_id)
    )
    stmt = (
        stmt.where(
            Delivery.campaign_id == campaign_id,
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at <= now,
            Delivery.id > after_id,
        )
        .order_by(Delivery.id)
        .limit(settings.chunk_size)
    )
    if upto_id is not None:
        stmt = stmt.where(Delivery.id <= upto_id)
    if is_postgresql(session):
        stmt = stmt.with_for_update(of=Delivery, skip_locked=True)
    rows = session.execute(stmt).all()
    if not rows:
        session.commit()
        return ChunkResult()

    verdicts = gates.decide(
        session, campaign, [row for row in rows if row.reason is None], settings, now
    )
    to_send = verdicts.send
    by_reason: dict[str, list[int]] = defaultdict(list, verdicts.suppressed)
    for row in rows:
        if row.reason is not None:
            by_reason[row.reason].append(row.id)
    for why, ids in by_reason.items():
        set_deliveries(session, ids, status=DeliveryStatus.SUPPRESSED, reason=why, updated_at=now)
    if verdicts.deferred:
        _defer(session, verdicts.deferred, now)
    if to_send:
        promotional = campaign.category == CampaignCategory.PROMOTIONAL
        set_deliveries(
            session,
            [row.id for row in to_send],
            status=DeliveryStatus.SENDING,
            claimed_at=now,
            attempts=Delivery.attempts + 1,
            updated_at=now,
            # What frequency caps count: promotional messages handed over.
            handed_at=now if promotional else None,
        )
    messages = [_message(campaign, category, row, now) for row in to_send]
    session.commit()  # the claim: from here on no other dispatcher takes these rows

    results: list[SendResult] = []
    for start in range(0, len(messages), push.max_batch):
        results += push.send(messages[start : start + push.max_batch])
    _record(session, campaign_id, to_send, results, settings)
    return ChunkResult(claimed=len(rows), last_id=rows[-1].id)


def _defer(session: Db, deferred: list[tuple[int, datetime]], now: datetime) -> None:
    """Rows held back by quiet hours stay pending, due again when those end."""
    table = cast(sa.Table, Delivery.__table__)
    session.execute(
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"))
        .values(
            next_attempt_at=sa.bindparam("b_next", type_=UTCDateTime()),
            reason=gates.QUIET_HOURS,
            updated_at=now,
        ),
        [{"b_id": row_id, "b_next": until} for row_id, until in deferred],
    )


def _record(
    session: Db,
    campaign_id: str,
    rows: list[Any],
    results: list[SendResult],
    settings: Settings,
) -> None:
    """Write the outcome of a hand-off, in one transaction."""
    now = utcnow()
    sent: list[int] = []
    updates: list[dict[str, Any]] = []
    pruned: list[dict[str, Any]] = []
    counts = {"sent": 0, "failed": 0, "retrying": 0}
    # send() keeps the order of messages, so result i belongs to row i.
    for row, result in zip(rows, results, strict=True):
        attempts = row.attempts + 1
        if result.outcome == Outcome.SENT:
            sent.append(row.id)  # all alike: one UPDATE … WHERE id IN (…) below
            counts["sent"] += 1
            continue
        update = {"b_id": row.id, "b_reason": result.error, "b_next": now, "b_now": now}
        if result.outcome == Outcome.RETRY and attempts < settings.max_attempts:
            delay = backoff_seconds(attempts, result.retry_after, settings, _rng)
            update.update(b_status=DeliveryStatus.PENDING, b_next=now + timedelta(seconds=delay))
            counts["retrying"] += 1
        else:
            update.update(b_status=DeliveryStatus.FAILED, b_reason=result.error or "unknown")
            counts["failed"] += 1
            if result.outcome == Outcome.INVALID_TOKEN:
                pruned.append({"b_device": row.device_id, "b_token": row.push_token, "b_now": now})
        updates.append(update)
    table = cast(sa.Table, Delivery.__table__)
    # Hold the campaign first, as claims do: a cancel in progress finishes before
    # rows go back to pending (and is seen by _suppress_if_cancelled), and a later
    # cancel waits for this commit, so no retry is left pending on a cancelled campaign.
    lock_campaign(session, campaign_id, exclusive=False)
    if sent:
        session.execute(
            sa.update(table)
            .where(table.c.id.in_(sent), table.c.status == DeliveryStatus.SENDING)
            .values(
                status=DeliveryStatus.SENT,
                reason=None,
                next_attempt_at=now,
                updated_at=now,
                claimed_at=None,
            )
        )
    if updates:
        session.execute(
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("b_id"),
                table.c.status == DeliveryStatus.SENDING,
            )
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
        # Only the token FCM refused: a device that has since checked in with a
        # new one keeps it.
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
    if counts["retrying"]:
        _suppress_if_cancelled(session, campaign_id, now)
    session.commit()
    if counts["failed"] or pruned:
        log.info(
            "campaign %s: %s sent, %s failed (%s tokens pruned), %s to retry",
            campaign_id,
            counts["sent"],
            counts["failed"],
            len(pruned),
            counts["retrying"],
        )


def _suppress_if_cancelled(session: Db, campaign_id: str, now: datetime) -> None:
    """A retry recorded after a cancel is suppressed, not left pending."""
    cancelled = (
        sa.select(Campaign.id)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.CANCELLED)
        .exists()
    )
    session.execute(
        sa.update(Delivery)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status == DeliveryStatus.PENDING,
            cancelled,
        )
        .values(status=DeliveryStatus.SUPPRESSED, reason="cancelled", updated_at=now)
        .execution_options(synchronize_session=False)
    )


def finish_if_done(session: Db, campaign_id: str) -> bool:
    """End the campaign when it is enumerated and nothing is left undecided.

    It ends `failed` when FCM refused every message it was handed (bad credentials, a
    malformed payload) and `completed` otherwise, even when nothing needed sending.
    """
    deliveries = sa.select(Delivery.id).where(Delivery.campaign_id == campaign_id)
    unfinished = deliveries.where(Delivery.status.in_(UNFINISHED)).exists()
    nothing_got_through = sa.and_(
        deliveries.where(Delivery.status == DeliveryStatus.FAILED).exists(),
        ~deliveries.where(Delivery.status == DeliveryStatus.SENT).exists(),
    )
    ended = session.scalar(
        sa.update(Campaign)
        .where(
            Campaign.id == campaign_id,
            # Scheduled: its audience turned out empty, or all was suppressed.
            Campaign.status.in_([CampaignStatus.SENDING, CampaignStatus.SCHEDULED]),
            Campaign.enumeration_done.is_(True),
            ~unfinished,
        )
        .values(
            status=sa.case(
                (nothing_got_through, CampaignStatus.FAILED.value),
                else_=CampaignStatus.COMPLETED.value,
            ),
            finished_at=utcnow(),
        )
        .returning(Campaign.status)
        .execution_options(synchronize_session=False)
    )
    # Ended just now, or cancelled and its last chunk in flight now recorded.
    campaigns.store_final_counts(session, campaign_id)
    session.commit()
    if ended is not None:
        log.info("campaign %s %s", campaign_id, ended)
    return ended is not None


def run_campaign(
    session: Db,
    push: PushTransport,
    campaign_id: str,
    settings: Settings,
    *,
    max_chunks: int | None = None,
) -> int:
    """Enumerate and send what is due now, chunk by chunk; the number of chunks claimed."""
    after = 0
    chunks = 0
    enumerated = False
    while max_chunks is None or chunks < max_chunks:
        result = process_chunk(session, push, campaign_id, settings, after_id=after)
        if result.claimed:
            after = result.last_id or after
            chunks += 1
            continue
        if enumerated:
            break
        batch = enumerate_batch(session, campaign_id, settings)
        enumerated = batch is None or batch.done
    finish_if_done(session, campaign_id)
    return chunks
