"""Enumeration: a campaign's audience expanded, page by page, into pending delivery rows."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from mobile_api.services import Db
from mobile_api.services import audience as aud
from models import CampaignStatus, Delivery, DeliveryStatus, Device, utcnow
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
