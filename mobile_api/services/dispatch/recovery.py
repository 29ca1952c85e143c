"""Recovery: claims of dead dispatchers, campaigns whose Celery tasks were lost."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import cast

import sqlalchemy as sa

from mobile_api.services import Db, campaigns, delivery_counts
from models import Campaign, CampaignStatus, Delivery, DeliveryStatus, utcnow

from . import ledger
from .core import INTERRUPTED, Settings, log


def release_lapsed_claims(
    session: Db,
    settings: Settings,
    *,
    campaign_id: str | None = None,
    first_id: int | None = None,
    last_id: int | None = None,
) -> int:
    """Give the rows of dead dispatchers (lease lapsed) back to be sent; how many.

    A row claimed but never handed over is simply sent again. A row in flight
    (handed over, its answer never recorded) is handed over once more: the same
    campaign makes the same message with the same collapse identity (Android tag
    and collapse key, apns-collapse-id), so a device that shows the first copy
    replaces it. Either way it goes back to `pending`, due now, so the next claim
    reads consent and deliverability again, and it is counted once, by the outcome
    of its last hand-off (a late answer to the first one is fenced off by the
    attempts value of the new claim).

    On a cancelled campaign nothing is sent again: rows never handed over are
    suppressed `cancelled`, rows in flight are failed `interrupted` (what became of
    them is unknown).
    """
    now = utcnow()
    table = cast(sa.Table, Delivery.__table__)
    lapsed = ledger.lapsed(table, settings, now)
    if campaign_id is not None:
        lapsed.append(Delivery.campaign_id == campaign_id)
    if first_id is not None:
        lapsed.append(Delivery.id >= first_id)
    if last_id is not None:
        lapsed.append(Delivery.id <= last_id)
    if not ledger.any_lapsed(session, table, lapsed):
        return 0
    cancelled = Delivery.campaign_id.in_(
        sa.select(Campaign.id).where(Campaign.status == CampaignStatus.CANCELLED)
    )
    ended = session.execute(
        sa.update(Delivery)
        .where(*lapsed, cancelled)
        .values(
            status=sa.case(
                (Delivery.handed_at.is_(None), DeliveryStatus.SUPPRESSED.value),
                else_=DeliveryStatus.FAILED.value,
            ),
            reason=sa.case((Delivery.handed_at.is_(None), "cancelled"), else_=INTERRUPTED),
            claimed_at=None,
            updated_at=now,
        )
        .returning(Delivery.campaign_id, Delivery.status, Delivery.reason)
        .execution_options(synchronize_session=False)
    ).all()
    released = ledger.release(session, table, lapsed, now, table.c.handed_at)
    changes: Counter[delivery_counts.Key] = Counter()
    for row in ended:
        changes.update(delivery_counts.decided(row.campaign_id, {(row.status, row.reason): 1}))
    delivery_counts.add(session, changes)
    session.commit()
    # A cancelled campaign may have been waiting on these. After the commit, not
    # in it: holding these rows while waiting for a campaign row that a recording
    # worker holds (and that worker waiting for these rows) would deadlock.
    for ended_id in {row.campaign_id for row in ended}:
        campaigns.store_final_counts(session, ended_id)
        session.commit()
    in_flight = sum(1 for row in released if row.handed_at is not None)
    if released or ended:
        log.warning(
            "claims of a dead dispatcher lapsed: %s deliveries to send again "
            "(%s of them in flight: same collapse identity), %s ended with their "
            "cancelled campaign",
            len(released),
            in_flight,
            len(ended),
        )
    return len(released) + len(ended)


# The name the Celery sweep and the worker used before lapsed claims were sent again.
resolve_interrupted = release_lapsed_claims


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
