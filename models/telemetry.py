"""App events sent by devices, and the history of their OS and app versions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow

# BigInteger on PostgreSQL, INTEGER (the rowid alias) on SQLite: an ever-growing
# key keeps bulk inserts appending to the right edge of the primary-key B-tree.
_SERIAL = BigInteger().with_variant(Integer, "sqlite")


class TelemetryEvent(Base):
    """One app event (open, screen, action) a device sent with analytics consent."""

    __tablename__ = "telemetry_events"
    __table_args__ = (
        # Idempotency: a device's event_id is stored once. NULLs are distinct in a
        # unique index, so events without an id never conflict; and with device_id
        # leading, the same index serves the cascade on device erasure and export.
        Index("uq_telemetry_events_device_id_event_id", "device_id", "event_id", unique=True),
        # Retention: the purge run deletes by received_at.
        Index("ix_telemetry_events_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(_SERIAL, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(26), ForeignKey("devices.id", ondelete="CASCADE"))
    event_id: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class VersionField(StrEnum):
    """Which version of a device changed."""

    OS_VERSION = "os_version"
    APP_VERSION = "app_version"


class DeviceVersionChange(Base):
    """A change of a device's OS or app version, as reported by a check-in."""

    __tablename__ = "device_version_changes"
    __table_args__ = (
        Index("ix_device_version_changes_device_id_id", "device_id", "id"),
        # Insights count the changes of the last 30 days.
        Index("ix_device_version_changes_changed_at", "changed_at"),
    )

    id: Mapped[int] = mapped_column(_SERIAL, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(26), ForeignKey("devices.id", ondelete="CASCADE"))
    field: Mapped[str] = mapped_column(String(16))
    old_value: Mapped[str | None] = mapped_column(String(32))
    new_value: Mapped[str | None] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
