"""The scheduling contract of both dispatchers: what work is due, and when the next is.

The embedded worker and the Celery tasks do not decide on their own when a
campaign should be looked at again: they ask `due_at` (one campaign, or an id range
of it) or `agenda` (every active campaign), and come back at the moment it names.
All of it only reads, so an idle dispatcher asking never takes SQLite's write lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from mobile_api.services import Db
from models import ACTIVE_STATUSES, Campaign, Delivery, DeliveryStatus, utcnow
from models.base import UTCDateTime

from .core import UNFINISHED, Settings


def active_campaign_ids(session: Db) -> list[str]:
    """Campaigns queued or sending, oldest first."""
    ids = session.scalars(
        sa.select(Campaign.id)
        .where(Campaign.status.in_(ACTIVE_STATUSES))
        .order_by(Campaign.queued_at, Campaign.id)
    ).all()
    session.commit()
    return list(ids)


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
    settings: Settings | None = None,
) -> datetime | None:
    """When this work is next due; a moment at or before `now` means now, None never.

    Without an id range it is the whole campaign: due now while it is active and has
    an audience left to enumerate or nothing left undecided (it is ready to
    complete). Otherwise, within the range if one is given (a Celery chunk), the
    earliest of: a pending delivery's next attempt (one held by its provider's
    circuit breaker is due when that may close), and the lapse of the lease on a chunk
    another dispatcher claimed (if that one died, its rows are sent again then).
    """
    now = now or utcnow()
    lease = timedelta(seconds=(settings or Settings()).claim_lease_seconds)
    whole = first_id is None and last_id is None
    rows = [Delivery.campaign_id == campaign_id]
    if first_id is not None:
        rows.append(Delivery.id >= first_id)
    if last_id is not None:
        rows.append(Delivery.id <= last_id)
    pending = (*rows, Delivery.status == DeliveryStatus.PENDING)
    claimed = (
        sa.select(sa.func.min(Delivery.claimed_at))
        .where(*rows, Delivery.status == DeliveryStatus.SENDING)
        .scalar_subquery()
    )
    columns: list[Any] = [
        Campaign.status,
        Campaign.enumeration_done,
        # EXISTS stops at the first due row; the earliest of all is looked for
        # only when none is due.
        sa.select(Delivery.id)
        .where(*pending, Delivery.next_attempt_at <= now)
        .exists()
        .label("due_now"),
        sa.type_coerce(claimed, UTCDateTime()).label("claimed"),
    ]
    if whole:
        undecided = sa.select(Delivery.id).where(*rows, Delivery.status.in_(UNFINISHED)).exists()
        columns.append(undecided.label("undecided"))
    found = session.execute(sa.select(*columns).where(Campaign.id == campaign_id)).first()
    if found is None or found.status not in ACTIVE_STATUSES:
        session.commit()
        return None
    if whole and (not found.enumeration_done or not found.undecided):
        session.commit()
        return now
    moments = []
    if found.claimed is not None:
        moments.append(found.claimed + lease)
    if found.due_now:
        moments.append(now)
    else:
        earliest = session.scalar(sa.select(sa.func.min(Delivery.next_attempt_at)).where(*pending))
        if earliest is not None:
            moments.append(earliest)
    session.commit()
    return min(moments, default=None)


def next_due(
    session: Db, campaign_id: str, first_id: int = 0, last_id: int | None = None
) -> datetime | None:
    """The earliest next attempt of a pending delivery in an id range, however overdue.

    The Celery sweep tells a lost campaign by how long its work has been overdue;
    dispatchers deciding when to come back ask `due_at`.
    """
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


def agenda(session: Db, now: datetime | None = None, settings: Settings | None = None) -> Agenda:
    """The active campaigns due now (oldest first) and when the next one is."""
    now = now or utcnow()
    due: list[str] = []
    later: list[datetime] = []
    for campaign_id in active_campaign_ids(session):
        at = due_at(session, campaign_id, now=now, settings=settings)
        if at is None:
            continue
        if at <= now:
            due.append(campaign_id)
        else:
            later.append(at)
    return Agenda(due, min(later, default=None))


def has_work(session: Db, campaign_id: str, settings: Settings | None = None) -> bool:
    """Whether a pass over the campaign would change anything now; reads only.

    A campaign only waiting for retries or for another dispatcher's chunk is left
    alone, so an idle poll never takes SQLite's single write lock.
    """
    now = utcnow()
    at = due_at(session, campaign_id, now=now, settings=settings)
    return at is not None and at <= now
