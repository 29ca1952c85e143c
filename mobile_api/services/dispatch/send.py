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

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from mobile_api.push import PushMessage, PushTransport, SendResult
from mobile_api.services import Db, campaigns, categories, delivery_counts, is_postgresql
from mobile_api.services import audience as aud
from mobile_api.services import messaging as rules
from models import (
    Campaign,
    CampaignStatus,
    Category,
    Delivery,
    DeliveryStatus,
    Device,
    utcnow,
)
from models.base import UTCDateTime

from . import breaker, gates, ledger
from .core import UNFINISHED, Settings, lock_campaign, log
from .enumerate import enumerate_batch
from .handoff import SendPacing


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What one claim-send-record cycle did."""

    claimed: int = 0
    last_id: int | None = None


def collapse_id(campaign: Campaign) -> str:
    """The campaign's identity on a device: every hand-off of it to one device carries it.

    The campaign's collapse key when it has one (a newer campaign with the same key
    replaces an older one, as marketers expect of a collapse key), else its id.
    """
    return campaign.collapse_key or campaign.id


def _message(campaign: Campaign, category: Category | None, row: Any, now: datetime) -> PushMessage:
    """The message for one claimed row: its language, remaining TTL, category and rich content."""
    key = rules.content_key(campaign.content, row.locale)
    text = campaign.content[key] if campaign.content and key else None
    ttl = rules.remaining_ttl(campaign.ttl_seconds, row.due_at, now)
    return PushMessage(
        token=row.push_token,
        provider=row.push_provider,
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
        collapse_id=collapse_id(campaign),
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


def retry_deadline(
    campaign: Campaign, settings: Settings, now: datetime, due: datetime | None = None
) -> datetime:
    """Until when a message of the campaign is retried: the retry window, or its TTL if shorter.

    Both count from when the campaign started sending, or from when the messages
    became due if later (a scheduled wave); past it a message FCM keeps refusing as
    retryable is failed with the last reason. (Promotions have a TTL by default in
    v1.1, so the window must bound them too.)
    """
    origin = campaign.started_at or now
    if due is not None:
        origin = max(origin, due)
    return ledger.retry_deadline(origin, campaign.ttl_seconds, settings)


def process_chunk(
    session: Db,
    push: PushTransport,
    campaign_id: str,
    settings: Settings,
    *,
    after_id: int = 0,
    upto_id: int | None = None,
    limiter: SendPacing | None = None,
) -> ChunkResult:
    """Claim the next due pending deliveries (id > after_id), hand them to FCM, record.

    Rows of a provider whose circuit breaker is open are held (pending, due when
    it may close); one of them goes as its probe when it is half-open.
    """
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
            Device.push_provider,
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

    table = cast(sa.Table, Delivery.__table__)
    # Rows of a provider whose breaker is open wait for it (deferred), before the
    # gates count anything against the device's caps.
    candidates, gate = breaker.admit(
        session, table, [row for row in rows if row.reason is None], now, settings
    )
    verdicts = gates.decide(session, campaign, candidates, settings, now)
    to_send = verdicts.send
    if verdicts.deferred:
        _defer(session, verdicts.deferred, now)
    # Without a send rate to wait for, the hand-off follows at once: the claim
    # marks the rows handed (in flight) in the same transaction. With one, each
    # slice is marked just before it goes (ledger.hand_off).
    suppressed = ledger.claim(
        session,
        table,
        to_send,
        ledger.refused(rows, verdicts.suppressed),
        now,
        handed_at=now if limiter is None else None,
    )
    delivery_counts.add(session, delivery_counts.decided(campaign_id, suppressed))
    # Each message names its device's provider: the router hands it to that transport.
    messages = [_message(campaign, category, row, now) for row in to_send]
    waves = [row.due_at for row in to_send if row.due_at is not None]
    deadline = retry_deadline(campaign, settings, now, min(waves, default=None))
    session.commit()  # the claim: from here on no other dispatcher takes these rows

    with ledger.leased(session, table, to_send, settings.claim_lease_seconds):
        results = ledger.hand_off(session, table, push, to_send, messages, limiter)
    _record(session, campaign_id, to_send, results, settings, deadline)
    breaker.update(session, gate, to_send, results, settings)
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
    results: list[SendResult | None],
    settings: Settings,
    deadline: datetime,
) -> None:
    """Write the outcome of a hand-off, in one transaction.

    Only rows still claimed by this hand-off are written (status `sending` and the
    attempts value the claim set): a row whose lease lapsed meanwhile belongs to
    whoever took it over, and is counted by the outcome of its last hand-off.
    """
    decided = ledger.decide(rows, results, settings, lambda _row: deadline)
    now, counts, pruned = decided.now, decided.counts, decided.pruned
    # Hold the campaign first, as claims do: a cancel in progress finishes before
    # rows go back to pending (and is seen by _suppress_if_cancelled), and a later
    # cancel waits for this commit, so no retry is left pending on a cancelled campaign.
    lock_campaign(session, campaign_id, exclusive=False)
    written = ledger.write(session, cast(sa.Table, Delivery.__table__), decided)
    if counts["retrying"] or counts["not_handed"]:
        written[(DeliveryStatus.SUPPRESSED.value, "cancelled")] += _suppress_if_cancelled(
            session, campaign_id, now
        )
    delivery_counts.add(session, delivery_counts.decided(campaign_id, written))
    session.commit()
    if counts["failed"] or pruned or counts["not_handed"]:
        log.info(
            "campaign %s: %s sent, %s failed (%s tokens pruned), %s to retry, %s not handed over",
            campaign_id,
            counts["sent"],
            counts["failed"],
            len(pruned),
            counts["retrying"],
            counts["not_handed"],
        )


def _suppress_if_cancelled(session: Db, campaign_id: str, now: datetime) -> int:
    """A retry recorded after a cancel is suppressed, not left pending; how many."""
    cancelled = (
        sa.select(Campaign.id)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.CANCELLED)
        .exists()
    )
    result = session.execute(
        sa.update(Delivery)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status == DeliveryStatus.PENDING,
            cancelled,
        )
        .values(status=DeliveryStatus.SUPPRESSED, reason="cancelled", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


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
    limiter: SendPacing | None = None,
) -> int:
    """Enumerate and send what is due now, chunk by chunk; the number of chunks claimed."""
    after = 0
    chunks = 0
    enumerated = False
    while max_chunks is None or chunks < max_chunks:
        result = process_chunk(
            session, push, campaign_id, settings, after_id=after, limiter=limiter
        )
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
