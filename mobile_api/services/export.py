"""Export: everything the service holds about a device or account, as one readable document.

Which columns appear is the data inventory's (models/inventory.py) to say: the `device` part
holds every device column it exports as `device.<column>`, and `items()` turns rows into the
items of a section with the columns it exports there. Modules that keep more data about a
device add a section without touching this file:

    @export.device_section("telemetry_events")
    def _telemetry(session: Db, device: Device) -> list[dict[str, Any]]: ...

The section appears under that key in every device export (self-service, support
and per account), in the order the sections were registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from mobile_api.services import Db
from models import AccountTermination, ConsentRecord, Device, utcnow
from models.inventory import exported_columns, exported_device_fields

DeviceSection = Callable[[Db, Device], Any]
S = TypeVar("S", bound=DeviceSection)

_DEVICE_SECTIONS: dict[str, DeviceSection] = {}

# The device columns the inventory exports under "device" (a new column declared there with
# an export path "device.<column>" appears in every export without a change here).
_DEVICE_FIELDS = exported_device_fields()


def device_section(name: str) -> Callable[[S], S]:
    """Register a provider of one more section of every device export."""

    def decorator(provider: S) -> S:
        if name in _DEVICE_SECTIONS or name in {"exported_at", "device", "preferences"}:
            raise ValueError(f"export section {name!r} is already defined")
        _DEVICE_SECTIONS[name] = provider
        return provider

    return decorator


def to_json(value: Any) -> Any:
    """An RFC 3339 UTC string for a datetime; anything else unchanged."""
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def items(rows: Iterable[Any], table: str, path: str) -> list[dict[str, Any]]:
    """Rows of `table` as the items of the export's list at `path`.

    Each item holds the columns the inventory exports there: a column declared with that
    path appears in every export without more code.
    """
    columns = exported_columns(table, path)
    return [{column: to_json(getattr(row, column)) for column in columns} for row in rows]


@device_section("consents")
def _consents(session: Db, device: Device) -> list[dict[str, Any]]:
    consents = session.scalars(
        sa.select(ConsentRecord)
        .where(ConsentRecord.device_id == device.id)
        .order_by(ConsentRecord.id)
    )
    return items(consents, "consent_records", "consents")


def _device_document(session: Db, device: Device) -> dict[str, Any]:
    document: dict[str, Any] = {
        "device": {field: to_json(getattr(device, field)) for field in _DEVICE_FIELDS},
        "preferences": device.preferences(),
    }
    for name, provider in _DEVICE_SECTIONS.items():
        document[name] = provider(session, device)
    return document


def export_device(session: Db, device: Device) -> dict[str, Any]:
    """Device fields, preferences, the full consent history and every registered section."""
    return {"exported_at": to_json(utcnow()), **_device_document(session, device)}


def export_account(session: Db, account_id: str) -> dict[str, Any] | None:
    """Every device of an account as in `export_device`, plus its termination; None if unknown."""
    devices = session.scalars(
        sa.select(Device).where(Device.account_id == account_id).order_by(Device.id)
    ).all()
    termination = session.get(AccountTermination, account_id)
    if not devices and termination is None:
        return None
    return {
        "exported_at": to_json(utcnow()),
        "account_id": account_id,
        "terminated_at": to_json(termination.terminated_at) if termination else None,
        "devices": [_device_document(session, device) for device in devices],
    }
