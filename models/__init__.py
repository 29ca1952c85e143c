"""SQLAlchemy models: one module per aggregate, no Flask imports."""

from models.auth import ApiKey, Role
from models.base import Base, new_id, utcnow
from models.campaign import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Campaign,
    CampaignCategory,
    CampaignStatus,
    Delivery,
    DeliveryCount,
    DeliveryStatus,
)
from models.category import (
    PROMOTIONS,
    SERVICE,
    Category,
    CategoryKind,
    CategoryPreference,
    InterruptionLevel,
)
from models.device import (
    LOCATION_ALLOWED,
    PREFERENCES,
    ConsentRecord,
    ConsentSource,
    Device,
    LocationPermission,
    Platform,
    Purpose,
    PushPermission,
)
from models.notification import (
    IdempotencyKey,
    Notification,
    NotificationDelivery,
    NotificationStatus,
)
from models.privacy import AccountTermination, AccountTombstone, AuditEvent
from models.push_breaker import PushBreaker
from models.staff import StaffLink, StaffMember, StaffRole, StaffSession
from models.telemetry import DeviceVersionChange, TelemetryEvent, VersionField

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "LOCATION_ALLOWED",
    "PREFERENCES",
    "PROMOTIONS",
    "SERVICE",
    "AccountTermination",
    "AccountTombstone",
    "ApiKey",
    "AuditEvent",
    "Base",
    "Campaign",
    "CampaignCategory",
    "CampaignStatus",
    "Category",
    "CategoryKind",
    "CategoryPreference",
    "ConsentRecord",
    "ConsentSource",
    "Delivery",
    "DeliveryCount",
    "DeliveryStatus",
    "Device",
    "DeviceVersionChange",
    "IdempotencyKey",
    "InterruptionLevel",
    "LocationPermission",
    "Notification",
    "NotificationDelivery",
    "NotificationStatus",
    "Platform",
    "Purpose",
    "PushBreaker",
    "PushPermission",
    "Role",
    "TelemetryEvent",
    "VersionField",
    "new_id",
    "utcnow",
]
__all__ += ["StaffLink", "StaffMember", "StaffRole", "StaffSession"]
