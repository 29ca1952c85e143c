"""Export: everything the service holds about a device, as one readable document."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from mobile_api.services import Db, telemetry
from models import ConsentRecord, Device, utcnow

_DEVICE_FIELDS = (
    "id",
    "installation_id",
    "platform",
    "os_version",
    "device_model",
    "app_version",
    "locale",
    "timezone",
    "push_token",
    "push_token_invalid_at",
    "push_permission",
    "location_permission",
    "account_id",
    "disabled_at",
    "disabled_reason",
    "disabled_ticket",
    "created_at",
    "updated_at",
    "last_seen_at",
)


def _json(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def export_device(session: Db, device: Device) -> dict[str, Any]:
    """Device fields, preferences and the full consent history of one device."""
    consents = session.scalars(
        sa.select(ConsentRecord)
        .where(ConsentRecord.device_id == device.id)
        .order_by(ConsentRecord.id)
    )
    return {
        "exported_at": _json(utcnow()),
        "device": {field: _json(getattr(device, field)) for field in _DEVICE_FIELDS},
        "preferences": device.preferences(),
        "consents": [
            {
                "purpose": c.purpose,
                "granted": c.granted,
                "source": c.source,
                "policy_version": c.policy_version,
                "recorded_at": _json(c.recorded_at),
            }
            for c in consents
        ],
        "telemetry": telemetry.export_section(session, device.id),
    }
