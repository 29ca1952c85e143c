"""The dispatcher's units of work, shared by the embedded worker and the Celery tasks.

Exactly-once bookkeeping:

1. `enumerate_batch` turns the next keyset page of the audience into `pending`
   delivery rows (one per campaign and device, unique) and advances the campaign's
   cursor in the same transaction, so enumeration resumes where it stopped.
2. `process_chunk` claims up to 500 due `pending` rows in one transaction, reading
   each device's current deliverability in the query that selects them: rows that
   are no longer deliverable become `suppressed` with the reason, the rest `sending`.
   The claim commits *before* the hand-off, so a restarted or concurrent dispatcher
   never sends those rows again (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the
   claim runs under the database's single write lock).
3. The results are recorded in one transaction: `sent`, `failed` (with the reason;
   dead tokens are marked invalid), or back to `pending` with a back-off for
   retryable errors until `PUSH_MAX_ATTEMPTS`.

A dispatcher killed between 2 and 3 leaves its chunk `sending`; after the claim lease
those rows become `failed` with reason `interrupted` and are never re-sent: a
message is handed to FCM at most once.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from flask import Flask

from mobile_api import push as push_seam
from mobile_api.push import Outcome, PushMessage, PushTransport, SendResult
from mobile_api.services import Db, campaigns, is_postgresql
from mobile_api.services import audience as aud
from models import (
    ACTIVE_STATUSES,
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    Device,
    utcnow,
)
from models.base import UTCDateTime

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"
_UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)


@dataclass(frozen=True, slots=True)
class Settings:
    """Dispatcher tuning, read from the app config."""

    chunk_size: int = 500
    enumerate_batch: int = 5000
    max_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    claim_lease_seconds: float = 600.0

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
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """Delivery rows one enumeration step inserted."""

    first_id: int | None
    last_id: int | None
    done: bool


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What one claim-send-record cycle did."""

    claimed: int = 0
    last_id: int | None = None


def transport(app: Flask) -> PushTransport:
    """The app's push router (see mobile_api.push.transport)."""
    return push_seam.transport(app)


def notify_queued(app: Flask, campaign_id: str) -> None:
    """Call after the commit that queued a campaign: with Celery, enqueue its dispatch."""
    if app.config["CELERY_BROKER_URL"]:
        from kombu.exceptions import OperationalError

        from mobile_api import tasks

        try:
            tasks.dispatch_campaign.delay(campaign_id)
        except OperationalError:
            # The campaign is committed as queued; the beat sweep enqueues it once
            # the broker is back, so the send itself has succeeded.
            log.warning("broker unreachable; campaign %s waits for the sweep", campaign_id)
    # Embedded: the worker polls for queued campaigns; nothing to do.


def _lock_campaign(session: Db, campaign_id: str, *, exclusive: bool) -> Campaign | None:
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


def enumerate_batch(session: Db, campaign_id: str, settings: Settings) -> Batch | None:
    """Insert the next page of the audience as pending deliveries; None when nothing to do."""
    now = utcnow()
    campaign = _lock_campaign(session, campaign_id, exclusive=True)
    if campaign is None or not campaign.active or campaign.enumeration_done:
        session.commit()
        return None
    started = campaign.started_at or now
    # Devices registered after the send started are not part of the audience.
    page = (
        sa.select(
            sa.literal(campaign.id, sa.String),
            Device.id,
            sa.literal(DeliveryStatus.PENDING.value, sa.String),
            sa.literal(0, sa.Integer),
            sa.literal(now, UTCDateTime()),
            sa.literal(now, UTCDateTime()),
        )
        .where(aud.matches(campaign.audience, started), Device.created_at <= started)
        .order_by(Device.id)
        .limit(settings.enumerate_batch)
    )
    if campaign.enumerated_through is not None:
        page = page.where(Device.id > campaign.enumerated_through)
    insert = (
        sa.insert(Delivery)
        .from_select(
            ["campaign_id", "device_id", "status", "attempts", "next_attempt_at", "updated_at"],
            page,
        )
        .returning(Delivery.id, Delivery.device_id)
    )
    rows = session.execute(insert).all()
    done = len(rows) < settings.enumerate_batch
    if rows:
        campaign.enumerated_through = max(row.device_id for row in rows)
    campaign.targeted += len(rows)
    campaign.enumeration_done = done
    campaign.status = CampaignStatus.SENDING
    campaign.started_at = started
    campaign.progress_at = now
    session.commit()
    ids = [row.id for row in rows]
    return Batch(min(ids, default=None), max(ids, default=None), done)


def _message(campaign: Campaign, token: str) -> PushMessage:
    return PushMessage(
        token=token,
        title=campaign.title,
        body=campaign.body,
        data=dict(campaign.data or {}),
        ttl_seconds=campaign.ttl_seconds,
        collapse_key=campaign.collapse_key,
        priority="high" if campaign.priority == "high" else "normal",
    )


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
    campaign = _lock_campaign(session, campaign_id, exclusive=False)
    if campaign is None or campaign.status != CampaignStatus.SENDING:
        session.commit()
        return ChunkResult()
    # The device's state is read here, in the query that selects the chunk.
    reason = sa.case(
        (Device.id.is_(None), aud.ERASED), else_=aud.exclusion_reason(campaign.category)
    ).label("reason")
    stmt = aud.with_terminations(
        sa.select(Delivery.id, Delivery.device_id, Delivery.attempts, Device.push_token, reason)
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
            attempts=Delivery.attempts + 1,
            updated_at=now,
        )
    messages = [_message(campaign, row.push_token) for row in to_send]
    session.commit()  # the claim: from here on no other dispatcher takes these rows

    results: list[SendResult] = []
    for start in range(0, len(messages), push.max_batch):
        results += push.send(messages[start : start + push.max_batch])
    _record(session, campaign_id, to_send, results, settings)
    return ChunkResult(claimed=len(rows), last_id=rows[-1].id)


def _set(session: Db, ids: list[int], **values: Any) -> None:
    session.execute(
        sa.update(Delivery)
        .where(Delivery.id.in_(ids))
        .values(**values)
        .execution_options(synchronize_session=False)
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
    _lock_campaign(session, campaign_id, exclusive=False)
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
    unfinished = deliveries.where(Delivery.status.in_(_UNFINISHED)).exists()
    nothing_got_through = sa.and_(
        deliveries.where(Delivery.status == DeliveryStatus.FAILED).exists(),
        ~deliveries.where(Delivery.status == DeliveryStatus.SENT).exists(),
    )
    ended = session.scalar(
        sa.update(Campaign)
        .where(
            Campaign.id == campaign_id,
            Campaign.status == CampaignStatus.SENDING,
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


def resolve_interrupted(session: Db, settings: Settings) -> int:
    """Chunks claimed longer than the lease ago belong to a dead dispatcher: never re-send."""
    cutoff = utcnow() - timedelta(seconds=settings.claim_lease_seconds)
    lapsed = (Delivery.claimed_at < cutoff, Delivery.status == DeliveryStatus.SENDING)
    # Look before writing: an idle poll must not take SQLite's single write lock.
    if not session.scalar(sa.select(sa.select(Delivery.id).where(*lapsed).exists())):
        session.commit()
        return 0
    campaign_ids = session.scalars(
        sa.update(Delivery)
        .where(*lapsed)
        .values(status=DeliveryStatus.FAILED, reason=INTERRUPTED, claimed_at=None)
        .returning(Delivery.campaign_id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    # A cancelled campaign may have been waiting on these. After the commit, not
    # in it: holding these rows while waiting for a campaign row that a recording
    # worker holds (and that worker waiting for these rows) would deadlock.
    for campaign_id in set(campaign_ids):
        campaigns.store_final_counts(session, campaign_id)
        session.commit()
    count = len(campaign_ids)
    if count:
        log.warning("%s deliveries were interrupted mid-hand-off; not re-sent", count)
    return count


def active_campaign_ids(session: Db) -> list[str]:
    """Campaigns queued or sending, oldest first."""
    ids = session.scalars(
        sa.select(Campaign.id)
        .where(Campaign.status.in_(ACTIVE_STATUSES))
        .order_by(Campaign.queued_at, Campaign.id)
    ).all()
    session.commit()
    return list(ids)


def next_due(
    session: Db, campaign_id: str, first_id: int = 0, last_id: int | None = None
) -> datetime | None:
    """When the earliest pending delivery in an id range may next be tried."""
    stmt = sa.select(sa.func.min(Delivery.next_attempt_at)).where(
        Delivery.campaign_id == campaign_id,
        Delivery.status == DeliveryStatus.PENDING,
        Delivery.id >= first_id,
    )
    if last_id is not None:
        stmt = stmt.where(Delivery.id <= last_id)
    value: datetime | None = session.scalar(stmt)
    session.commit()
    return value


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


def has_work(session: Db, campaign_id: str) -> bool:
    """Whether a pass over the campaign would change anything now; reads only.

    True when it is active and has an audience left to enumerate, a pending
    delivery due, or nothing left undecided (it is ready to complete). A campaign
    only waiting for retries or for another dispatcher's chunk is left alone, so
    an idle poll never takes SQLite's single write lock.
    """
    deliveries = sa.select(Delivery.id).where(Delivery.campaign_id == campaign_id)
    due = deliveries.where(
        Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= utcnow()
    ).exists()
    undecided = deliveries.where(Delivery.status.in_(_UNFINISHED)).exists()
    found = session.scalar(
        sa.select(Campaign.id).where(
            Campaign.id == campaign_id,
            Campaign.status.in_(ACTIVE_STATUSES),
            sa.or_(Campaign.enumeration_done.is_(False), due, ~undecided),
        )
    )
    session.commit()
    return found is not None


def note_progress(session: Db, campaign_id: str, every: timedelta) -> None:
    """Record that a chunk of the campaign was claimed or recorded, at most once per `every`.

    Reads first, so most calls write nothing; Celery's sweep reads it to tell a
    stall from a campaign whose chunks are being worked on.
    """
    now = utcnow()
    stale = sa.or_(Campaign.progress_at.is_(None), Campaign.progress_at < now - every)
    if session.scalar(sa.select(Campaign.id).where(Campaign.id == campaign_id, stale)):
        session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id, stale)
            .values(progress_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()


def stalled(campaign: Campaign, due: datetime | None, now: datetime, stall: timedelta) -> bool:
    """Whether a campaign has lost its Celery tasks rather than waiting behind others.

    Stalled: nothing enumerated, claimed or recorded for longer than `stall`, and
    still work to do: its audience not fully enumerated, or a delivery overdue by
    more than `stall` (`due`: the earliest pending one's next attempt).
    """
    last = campaign.progress_at or campaign.queued_at or now
    if now - last <= stall:
        return False
    return not campaign.enumeration_done or (due is not None and now - due > stall)


def queue_recovery(session: Db, campaign_id: str, now: datetime, lost_after: timedelta) -> bool:
    """Mark a recovery of the campaign outstanding; False if one already is.

    A recovery marked longer than `lost_after` ago never started (its message was
    lost with the broker) and may be replaced.
    """
    result = session.execute(
        sa.update(Campaign)
        .where(
            Campaign.id == campaign_id,
            sa.or_(
                Campaign.recovery_queued_at.is_(None),
                Campaign.recovery_queued_at < now - lost_after,
            ),
        )
        .values(recovery_queued_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def hold_recovery(session: Db, campaign_id: str, until: datetime | None) -> None:
    """Keep the recovery outstanding until `until` (it comes back then), or end it (None)."""
    session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(recovery_queued_at=until)
        .execution_options(synchronize_session=False)
    )
    session.commit()
