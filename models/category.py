"""Notification categories and each device's choices about them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class CategoryKind(StrEnum):
    """What consent a category needs: see services/categories.py."""

    PROMOTIONAL = "promotional"
    TRANSACTIONAL = "transactional"
    SERVICE = "service"


class InterruptionLevel(StrEnum):
    """iOS notification interruption levels a category may ask for."""

    PASSIVE = "passive"
    ACTIVE = "active"
    TIME_SENSITIVE = "time-sensitive"


# The built-in categories: v1's two campaign categories.
PROMOTIONS = "promotions"
SERVICE = "service"


class Category(Base):
    """A kind of notification the user can recognise (and silence) on the device."""

    __tablename__ = "notification_categories"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    default_enabled: Mapped[bool] = mapped_column(default=False)
    user_can_opt_out: Mapped[bool] = mapped_column(default=True)
    android_channel_id: Mapped[str] = mapped_column(String(100))
    ios_interruption_level: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CategoryPreference(Base):
    """A device's current choice for one category; its history is in the consent ledger."""

    __tablename__ = "device_category_preferences"

    device_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    category_key: Mapped[str] = mapped_column(
        String(40), ForeignKey("notification_categories.key"), primary_key=True
    )
    enabled: Mapped[bool]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
