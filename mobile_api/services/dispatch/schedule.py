"""The scheduling contract of both dispatchers: what work is due, and when the next is.

The embedded worker and the Celery tasks do not decide on their own when a
campaign should be looked at again: they ask `due_at` (one campaign, or an id range
of it) or `agenda` (every active campaign), and come back at the moment it names.
All of it only reads, so an idle dispatcher asking never takes SQLite's write lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from mobile_api.services import Db
from models import ACTIVE_STATUSES, Campaign, Delivery, DeliveryStatus, utcnow

from .core import UNFINISHED


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


@dataclass(frozen=True, slots=True)
class Agenda:
    """What a dispatcher should do now, and when it next has anything to do."""

    due: list[str]  # active campaigns with work due now, oldest first
    next_at: datetime | None  # when the earliest work not yet due becomes due


def due_at(
    session: Db,
    campaign_id: str,
    *,
    first_id: int | None = None,
    last_id: int | None = None,
    now: datetime | None = None,
) -> datetime | None:
    """When this work is next due; a moment at or before `now` means now, None never.

    Without an id range it is the whole campaign: due now while it is active and has
    an audience left to enumerate or nothing left undecided (it is ready to
    complete); else when its earliest pending delivery may be tried. With a range
    (a Celery chunk), only that range's pending deliveries count. Work another
    dispatcher holds is its own, so it never makes a campaign due here.
    """
    now = now or utcnow()
    if first_id is not None or last_id is not None:
        return next_due(session, campaign_id, first_id or 0, last_id)
    deliveries = sa.select(Delivery.id).where(Delivery.campaign_id == campaign_id)
    undecided = deliveries.where(Delivery.status.in_(UNFINISHED)).exists()
    campaign = session.execute(
        sa.select(Campaign.status, Campaign.enumeration_done, undecided.label("undecided")).where(
            Campaign.id == campaign_id
        )
    ).first()
    session.commit()
    if campaign is None or campaign.status not in ACTIVE_STATUSES:
        return None
    if not campaign.enumeration_done or not campaign.undecided:
        return now
    return next_due(session, campaign_id)


def agenda(session: Db, now: datetime | None = None) -> Agenda:
    """The active campaigns due now (oldest first) and when the next one is."""
    now = now or utcnow()
    due: list[str] = []
    later: list[datetime] = []
    for campaign_id in active_campaign_ids(session):
        at = due_at(session, campaign_id, now=now)
        if at is None:
            continue
        if at <= now:
            due.append(campaign_id)
        else:
            later.append(at)
    return Agenda(due, min(later, default=None))


def has_work(session: Db, campaign_id: str) -> bool:
    """Whether a pass over the campaign would change anything now; reads only.

    A campaign only waiting for retries or for another dispatcher's chunk is left
    alone, so an idle poll never takes SQLite's single write lock.
    """
    now = utcnow()
    at = due_at(session, campaign_id, now=now)
    return at is not None and at <= now
