"""SQLAlchemy models: one module per aggregate, no Flask imports."""

from models.auth import ApiKey, Role
from models.base import Base, new_id, utcnow
from models.device import (
    PREFERENCES,
    ConsentRecord,
    ConsentSource,
    Device,
    LocationPermission,
    Platform,
    Purpose,
    PushPermission,
)
from models.privacy import AccountTermination, AccountTombstone, AuditEvent
from models.telemetry import DeviceVersionChange, TelemetryEvent, VersionField

__all__ = [
    "PREFERENCES",
    "AccountTermination",
    "AccountTombstone",
    "ApiKey",
    "AuditEvent",
    "Base",
    "ConsentRecord",
    "ConsentSource",
    "Device",
    "DeviceVersionChange",
    "LocationPermission",
    "Platform",
    "Purpose",
    "PushPermission",
    "Role",
    "TelemetryEvent",
    "VersionField",
    "new_id",
    "utcnow",
]
