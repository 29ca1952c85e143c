"""Enumeration: a campaign's audience expanded, page by page, into pending delivery rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.expression import ColumnElement

from mobile_api.services import Db, delivery_counts
from mobile_api.services import audience as aud
from mobile_api.services import messaging as rules
from models import Campaign, CampaignStatus, Delivery, DeliveryStatus, Device, utcnow
from models.base import UTCDateTime

from .core import Settings, lock_campaign


@dataclass(frozen=True, slots=True)
class Batch:
    """Delivery rows one enumeration step inserted."""

    first_id: int | None
    last_id: int | None
    done: bool


def enumerate_batch(session: Db, campaign_id: str, settings: Settings) -> Batch | None:
    """Insert the next page of the audience as pending deliveries; None when nothing to do.

    The campaign's keyset cursor advances in the same transaction as the rows it
    inserts, so enumeration resumes where it stopped.
    """
    now = utcnow()
    campaign = lock_campaign(session, campaign_id, exclusive=True)
    if campaign is None or not campaign.active or campaign.enumeration_done:
        session.commit()
        return None
    started = campaign.started_at or now
    # Devices registered after the send started are not part of the audience.
    where = [aud.matches(campaign.audience, started), Device.created_at <= started]
    if campaign.enumerated_through is not None:
        where.append(Device.id > campaign.enumerated_through)
    due = _due(session, campaign, where, settings.enumerate_batch, now)
    page = (
        sa.select(
            sa.literal(campaign.id, sa.String),
            Device.id,
            sa.literal(DeliveryStatus.PENDING.value, sa.String),
            sa.literal(0, sa.Integer),
            due,
            due,
            sa.literal(now, UTCDateTime()),
        )
        .where(*where)
        .order_by(Device.id)
        .limit(settings.enumerate_batch)
    )
    insert = (
        sa.insert(Delivery)
        .from_select(
            [
                "campaign_id",
                "device_id",
                "status",
                "attempts",
                "next_attempt_at",
                "due_at",
                "updated_at",
            ],
            page,
        )
        .returning(Delivery.id, Delivery.device_id)
    )
    rows = session.execute(insert).all()
    pending = delivery_counts.key(campaign.id, DeliveryStatus.PENDING, None)
    delivery_counts.add(session, {pending: len(rows)})
    done = len(rows) < settings.enumerate_batch
    if rows:
        campaign.enumerated_through = max(row.device_id for row in rows)
    campaign.targeted += len(rows)
    campaign.enumeration_done = done
    if campaign.status == CampaignStatus.QUEUED:
        campaign.status = CampaignStatus.SENDING  # a scheduled one waits for its first wave
    campaign.started_at = started
    campaign.progress_at = now
    session.commit()
    ids = [row.id for row in rows]
    return Batch(min(ids, default=None), max(ids, default=None), done)


def _due(
    session: Db, campaign: Campaign, where: list[Any], limit: int, now: datetime
) -> ColumnElement[datetime]:
    """When each device of the next page is due: now, `send_at`, or its local-time wave.

    A local time is worked out once per timezone of the page (a CASE over them), not
    per device: the waves of a million devices in 40 zones are 40 computations.
    """
    # As of the send, not of this page: a page enumerated late keeps the send's waves.
    sent_at = campaign.queued_at or now
    not_before = max(campaign.send_at or sent_at, sent_at)
    if campaign.local_time is None:
        return sa.literal(not_before, UTCDateTime())
    zone_of = sa.func.coalesce(Device.timezone, campaign.fallback_timezone)
    page = sa.select(zone_of.label("zone")).where(*where).order_by(Device.id).limit(limit)
    zones = session.scalars(sa.select(sa.distinct(page.subquery().c.zone))).all()
    fallback = rules.local_time_due(
        campaign.local_time, not_before, rules.zone(campaign.fallback_timezone).key
    )
    waves = {
        name: rules.local_time_due(campaign.local_time, not_before, rules.zone(name, "UTC").key)
        for name in zones
    }
    if not waves:
        return sa.literal(fallback, UTCDateTime())
    return sa.case(
        {name: sa.literal(at, UTCDateTime()) for name, at in waves.items()},
        value=zone_of,
        else_=sa.literal(fallback, UTCDateTime()),
    )
