"""Transactional notifications, their per-device deliveries, and the idempotency keys."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

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


class NotificationStatus(StrEnum):
    """Where a notification is: derived from its deliveries, never stored."""

    QUEUED = "queued"  # accepted, nothing decided yet
    SENDING = "sending"  # some devices decided, some not
    COMPLETED = "completed"
    FAILED = "failed"  # every device it was handed over for was refused by FCM


class Notification(Base):
    """One message from the helpdesk backend to an account's devices (or named devices)."""

    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    category_key: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    content: Mapped[dict[str, dict[str, str]]] = mapped_column(JSON, default=dict)
    default_locale: Mapped[str | None] = mapped_column(String(35))
    data: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    link: Mapped[str | None] = mapped_column(String(2048))
    image_url: Mapped[str | None] = mapped_column(String(2048))
    ttl_seconds: Mapped[int | None]
    collapse_key: Mapped[str | None] = mapped_column(String(64))
    # Exactly one of these: whose devices were targeted.
    account_id: Mapped[str | None] = mapped_column(String(128))
    device_ids: Mapped[list[str] | None] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(64))  # key:<id>
    # The role that created it: a notify key reads only what notify keys made.
    created_role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationDelivery(Base):
    """One device of one notification: its own lane, never behind a campaign's rows."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "device_id"),
        # The dispatcher's one query: due pending rows, oldest first.
        Index("ix_notification_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_notification_deliveries_device_id", "device_id"),
        Index("ix_notification_deliveries_claimed_at", "claimed_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )
    notification_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("notifications.id", ondelete="CASCADE")
    )
    # NULL once the device is erased: the row keeps the notification's outcome whole.
    device_id: Mapped[str | None] = mapped_column(
        String(26), ForeignKey("devices.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(16), default="pending")  # a DeliveryStatus
    reason: Mapped[str | None] = mapped_column(String(40))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """An `Idempotency-Key` an API key used, with what it answered.

    The primary key makes the database the arbiter: of two requests racing with the
    same key, whatever process they run in, exactly one inserts this row.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    api_key_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 of the body as parsed JSON, canonically serialised.
    fingerprint: Mapped[str] = mapped_column(String(64))
    # No foreign key: the row is written first, before the notification it names,
    # so a racing duplicate waits on it before doing any other work.
    notification_id: Mapped[str] = mapped_column(String(26))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
