"""Push campaigns and their per-device deliveries (one row per campaign and device)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, new_id, utcnow


class CampaignCategory(StrEnum):
    """Promotional pushes need the device's opt-in; service announcements do not."""

    PROMOTIONAL = "promotional"
    SERVICE = "service"


class CampaignStatus(StrEnum):
    """Where a campaign is in its life."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"  # sent with a future send_at or a local_time: waits for its waves
    QUEUED = "queued"
    SENDING = "sending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


# A scheduled campaign is active: its audience is enumerated at once (targeted is
# fixed when it is sent), its deliveries wait for their due time.
ACTIVE_STATUSES = (CampaignStatus.SCHEDULED, CampaignStatus.QUEUED, CampaignStatus.SENDING)
FINAL_STATUSES = (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED, CampaignStatus.FAILED)


class DeliveryStatus(StrEnum):
    """The fate of one device in one campaign."""

    PENDING = "pending"  # not decided yet (maybe waiting for a retry)
    SENDING = "sending"  # claimed by a dispatcher and being handed to FCM
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"


class Campaign(Base):
    """A push to an audience of devices, sent once."""

    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_status", "status"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    audience: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ttl_seconds: Mapped[int | None]
    collapse_key: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.DRAFT)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Enumeration of the audience into deliveries: keyset cursor over device ids,
    # advanced in the same transaction as the rows it inserts (resumable).
    enumerated_through: Mapped[str | None] = mapped_column(String(26))
    enumeration_done: Mapped[bool] = mapped_column(default=False)
    targeted: Mapped[int] = mapped_column(default=0)
    # Last enumeration, claim or record (Celery chunks note it at most every few
    # seconds); the sweep calls a campaign stalled when this stops moving.
    progress_at: Mapped[datetime | None]
    # Celery: when the sweep's recovery of this campaign was queued (or, once it
    # waits for retries, when it comes back); NULL when none is outstanding.
    recovery_queued_at: Mapped[datetime | None]
    # The counts once every delivery is decided, kept here because delivery rows
    # are deleted after DELIVERY_RETENTION_DAYS; NULL until then (and for drafts).
    final_sent: Mapped[int | None]
    final_failed: Mapped[int | None]
    final_invalid_tokens_pruned: Mapped[int | None]
    final_suppressed: Mapped[dict[str, int] | None] = mapped_column(JSON)
    # v1.1: the notification category (its kind gives `category`), per-locale texts
    # ({tag: {title, body}}; title/body are the fallback in `default_locale`), rich
    # content, and the schedule (send_at, or local_time in each device's timezone).
    category_key: Mapped[str] = mapped_column(String(40), default="promotions")
    content: Mapped[dict[str, dict[str, str]] | None] = mapped_column(JSON)
    default_locale: Mapped[str | None] = mapped_column(String(35))
    image_url: Mapped[str | None] = mapped_column(Text)
    link: Mapped[str | None] = mapped_column(Text)
    sound: Mapped[str | None] = mapped_column(String(64))
    badge: Mapped[int | None]
    send_at: Mapped[datetime | None]
    local_time: Mapped[str | None] = mapped_column(String(5))
    fallback_timezone: Mapped[str] = mapped_column(String(64), default="UTC")

    @property
    def active(self) -> bool:
        """Whether a dispatcher still has work on it."""
        return self.status in ACTIVE_STATUSES


class Delivery(Base):
    """One device in one campaign: the ledger of the dispatch, each delivery counted once."""

    __tablename__ = "campaign_deliveries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "device_id"),
        Index("ix_campaign_deliveries_campaign_id_status_id", "campaign_id", "status", "id"),
        # A campaign's deliveries page by page, in id order, whatever the other campaigns hold.
        Index("ix_campaign_deliveries_campaign_id_id", "campaign_id", "id"),
        # Erasing a device sets device_id to NULL here: the index keeps that cheap.
        Index("ix_campaign_deliveries_device_id", "device_id"),
        # Only chunks being handed over have claimed_at set: finding dead claims is cheap.
        Index("ix_campaign_deliveries_claimed_at", "claimed_at"),
        # Frequency caps count a device's recent promotional hand-offs.
        Index("ix_campaign_deliveries_device_id_handed_at", "device_id", "handed_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )
    campaign_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("campaigns.id", ondelete="CASCADE")
    )
    # NULL once the device is erased: the row (no personal data) keeps the counts whole.
    device_id: Mapped[str | None] = mapped_column(
        String(26), ForeignKey("devices.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    reason: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The claim's lease: renewed while its dispatcher works on the row; a lapsed
    # one means the dispatcher died and another takes the row over.
    claimed_at: Mapped[datetime | None]
    # When the row was last handed to the push service. Set on a row still
    # `sending` (or `pending` again after its lease lapsed), it was in flight:
    # the next hand-off repeats the same collapse identity.
    handed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the message became due for this device (send_at or its local-time wave):
    # its TTL counts from here, whatever deferral or retries follow.
    due_at: Mapped[datetime | None]


class DeliveryCount(Base):
    """How many of a campaign's deliveries are in one state: its counts, kept as they change.

    Every write that inserts, decides or deletes delivery rows adds its changes here in
    the same transaction (mobile_api/services/delivery_counts.py), so these rows always
    equal a GROUP BY over the campaign's deliveries: `pending` stands for both undecided
    states (pending, sending) with no reason; the others keep their reason, '' for none.
    """

    __tablename__ = "campaign_delivery_counts"

    campaign_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
