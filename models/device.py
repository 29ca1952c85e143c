"""Devices, their current preferences, and the append-only consent ledger."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, event
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, new_id, utcnow


class Platform(StrEnum):
    """Mobile operating systems the app ships on."""

    ANDROID = "android"
    IOS = "ios"


class PushPermission(StrEnum):
    """The OS notification permission as the app last reported it."""

    GRANTED = "granted"
    PROVISIONAL = "provisional"
    DENIED = "denied"
    NOT_DETERMINED = "not_determined"


class LocationPermission(StrEnum):
    """The OS location permission as the app last reported it."""

    PRECISE = "precise"
    APPROXIMATE = "approximate"
    DENIED = "denied"
    NOT_DETERMINED = "not_determined"


# The OS permissions that let the app use location (places, the opt-in rate of insights).
LOCATION_ALLOWED = frozenset({LocationPermission.PRECISE, LocationPermission.APPROXIMATE})


class Purpose(StrEnum):
    """What a consent record is about."""

    PROMOTIONAL_PUSH = "promotional_push"
    LOCATION_SERVICES = "location_services"
    ANALYTICS = "analytics"
    OS_PUSH_PERMISSION = "os_push_permission"
    OS_LOCATION_PERMISSION = "os_location_permission"
    # Whether staff or the system let pushes reach the device (disable, termination).
    PUSH_DELIVERY = "push_delivery"


class ConsentSource(StrEnum):
    """Who caused a consent change."""

    APP = "app"
    OS_SETTINGS = "os_settings"
    SUPPORT = "support"
    SYSTEM = "system"


PREFERENCES = (Purpose.PROMOTIONAL_PUSH, Purpose.LOCATION_SERVICES, Purpose.ANALYTICS)


class Device(Base):
    """One installation of the app; everything the service holds hangs off it."""

    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_account_id", "account_id"),
        Index("ix_devices_last_seen_at", "last_seen_at"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    installation_id: Mapped[str] = mapped_column(String(128), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    platform: Mapped[str] = mapped_column(String(16))
    os_version: Mapped[str] = mapped_column(String(32))
    device_model: Mapped[str | None] = mapped_column(String(64))
    app_version: Mapped[str | None] = mapped_column(String(32))
    locale: Mapped[str | None] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64))
    # The token itself may be up to 4 KiB, too long for a B-tree entry on
    # PostgreSQL, so uniqueness is enforced on its SHA-256 instead.
    push_token: Mapped[str | None] = mapped_column(Text)
    push_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    push_token_invalid_at: Mapped[datetime | None]
    push_permission: Mapped[str | None] = mapped_column(String(16))
    location_permission: Mapped[str | None] = mapped_column(String(16))
    account_id: Mapped[str | None] = mapped_column(String(128))
    promotional_push: Mapped[bool] = mapped_column(default=False)
    location_services: Mapped[bool] = mapped_column(default=False)
    analytics: Mapped[bool] = mapped_column(default=False)
    # The user's own quiet hours ("HH:MM", in the device's timezone); NULL: the
    # deployment's QUIET_HOURS apply. A setting, not a consent.
    quiet_hours_start: Mapped[str | None] = mapped_column(String(5))
    quiet_hours_end: Mapped[str | None] = mapped_column(String(5))
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    disabled_ticket: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    consents: Mapped[list[ConsentRecord]] = relationship(
        back_populates="device",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ConsentRecord.id",
    )

    def preferences(self) -> dict[str, bool]:
        """The user's current choices, keyed by purpose."""
        return {p.value: bool(getattr(self, p.value)) for p in PREFERENCES}


class ConsentRecord(Base):
    """One change of a preference or OS permission; never updated in place."""

    __tablename__ = "consent_records"
    __table_args__ = (Index("ix_consent_records_device_id_id", "device_id", "id"),)

    # BigInteger on PostgreSQL, INTEGER (the rowid alias) on SQLite.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )
    device_id: Mapped[str] = mapped_column(String(26), ForeignKey("devices.id", ondelete="CASCADE"))
    # A Purpose, or `category:<key>` for a notification category's preference.
    purpose: Mapped[str] = mapped_column(String(64))
    granted: Mapped[bool]
    source: Mapped[str] = mapped_column(String(16))
    policy_version: Mapped[str | None] = mapped_column(String(32))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)

    device: Mapped[Device] = relationship(back_populates="consents")


@event.listens_for(ConsentRecord, "before_update")
def _ledger_is_append_only(mapper: Any, connection: Any, target: ConsentRecord) -> None:
    """Refuse to rewrite history: a consent record is written once."""
    raise RuntimeError("consent records are append-only")
