"""Recovery: claims of dead dispatchers, campaigns whose Celery tasks were lost."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from mobile_api.services import Db, campaigns
from models import Campaign, Delivery, DeliveryStatus, utcnow

from .core import INTERRUPTED, Settings, log


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
