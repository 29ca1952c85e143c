"""Telemetry: bulk, idempotent storage of app events, and the device version history."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from mobile_api.services import Db, export, is_postgresql, privacy
from mobile_api.services.export import device_section
from models import (
    Device,
    DeviceVersionChange,
    TelemetryEvent,
    VersionField,
    utcnow,
)

CONSENT_OFF = "analytics_consent_off"
ACCOUNT_TERMINATED = "account_terminated"


@dataclass(frozen=True, slots=True)
class Ingestion:
    """The reply to a batch: how many events the service holds, how many it refused."""

    accepted: int
    dropped: int
    reason: str | None


def ingest(session: Db, device: Device, events: Sequence[Mapping[str, Any]]) -> Ingestion:
    """Store a validated batch in one statement, all or nothing.

    An event whose event_id this device already sent is not stored again but
    counts as accepted: the service holds it, so a client retrying a batch after
    a timeout gets the same answer as the first attempt.
    """
    if not device.analytics:
        return Ingestion(0, len(events), CONSENT_OFF)
    if privacy.is_terminated(session, device.account_id):
        # The account's data is about to be erased: collect nothing new about it.
        return Ingestion(0, len(events), ACCOUNT_TERMINATED)
    if is_postgresql(session):
        stmt = _postgresql_insert(device.id, events, utcnow())
    else:
        stmt = _sqlite_insert(device.id, events, utcnow())
    try:
        session.execute(stmt)
        session.commit()
    except Exception:
        session.rollback()
        raise
    return Ingestion(len(events), 0, None)


_TABLE: sa.Table = TelemetryEvent.__table__  # type: ignore[assignment]

# The hot path of ingestion. SQLAlchemy compiles PostgreSQL's ON CONFLICT
# afresh on every execution (the construct is not cacheable), and a multi-row
# VALUES list of 100 events carries 600 parameters that psycopg re-parses each
# time. Here the SQL text is constant and the batch travels as one JSON
# parameter that the server unpacks.
_POSTGRESQL_INSERT = sa.text(
    "INSERT INTO telemetry_events"
    " (device_id, event_id, name, occurred_at, received_at, properties)"
    " SELECT :device_id, e.event_id, e.name, e.occurred_at, :received_at, e.properties"
    " FROM json_to_recordset(CAST(:events AS json))"
    " AS e(event_id varchar, name varchar, occurred_at timestamptz, properties json)"
    " ON CONFLICT (device_id, event_id) DO NOTHING"
).bindparams(sa.bindparam("received_at", type_=sa.DateTime(timezone=True)))


def _postgresql_insert(
    device_id: str, events: Sequence[Mapping[str, Any]], now: datetime
) -> sa.Executable:
    """INSERT … SELECT FROM json_to_recordset(batch) ON CONFLICT DO NOTHING."""
    batch = [
        {
            "event_id": e.get("event_id"),
            "name": e["name"],
            "occurred_at": e["occurred_at"].isoformat(),
            "properties": e.get("properties") or {},
        }
        for e in events
    ]
    return _POSTGRESQL_INSERT.bindparams(
        device_id=device_id, received_at=now, events=json.dumps(batch)
    )


def _sqlite_insert(
    device_id: str, events: Sequence[Mapping[str, Any]], now: datetime
) -> sa.Executable:
    """INSERT … VALUES (…), (…) ON CONFLICT DO NOTHING: one multi-row statement."""
    rows = [
        {
            "device_id": device_id,
            "event_id": e.get("event_id"),
            "name": e["name"],
            "occurred_at": e["occurred_at"],
            "received_at": now,
            "properties": e.get("properties") or {},
        }
        for e in events
    ]
    return (
        sqlite.insert(_TABLE)
        .values(rows)
        .on_conflict_do_nothing(index_elements=[_TABLE.c.device_id, _TABLE.c.event_id])
    )


_VERSION_CHANGE_INSERT = sa.insert(cast(sa.Table, DeviceVersionChange.__table__))


def record_version_change(
    session: Db, device: Device, changes: Mapping[str, Any], now: datetime
) -> None:
    """Append a history row per OS or app version that `changes` alters, with analytics consent.

    Without it only the device's current versions are kept (they pick the right notifications);
    a history of upgrades is analytics, and the policy promises none without consent.
    """
    if not device.analytics:
        return
    rows = []
    for field in VersionField:
        if field.value not in changes:
            continue
        new_value = changes[field.value]
        old_value = getattr(device, field.value)
        if new_value is None or new_value == old_value:
            # A cleared app version is no upgrade; the device keeps reporting it later.
            continue
        rows.append(
            {
                "device_id": device.id,
                "field": field.value,
                "old_value": old_value,
                "new_value": new_value,
                "changed_at": now,
            }
        )
    if rows:  # append-only history: a plain INSERT, no unit-of-work flush per check-in
        session.execute(_VERSION_CHANGE_INSERT, rows)


def forget(session: Db, device_id: str) -> None:
    """Delete what analytics consent collected: app events and version history; not committed."""
    session.execute(sa.delete(TelemetryEvent).where(TelemetryEvent.device_id == device_id))
    session.execute(
        sa.delete(DeviceVersionChange).where(DeviceVersionChange.device_id == device_id)
    )


@device_section("telemetry")
def _export(session: Db, device: Device) -> dict[str, list[dict[str, Any]]]:
    """The telemetry section of every device export."""
    return export_section(session, device.id)


def export_section(session: Db, device_id: str) -> dict[str, list[dict[str, Any]]]:
    """The device's stored app events and version history, oldest first."""
    events = session.scalars(
        sa.select(TelemetryEvent)
        .where(TelemetryEvent.device_id == device_id)
        .order_by(TelemetryEvent.id)
    )
    changes = session.scalars(
        sa.select(DeviceVersionChange)
        .where(DeviceVersionChange.device_id == device_id)
        .order_by(DeviceVersionChange.id)
    )
    return {
        "events": export.items(events, "telemetry_events", "telemetry.events"),
        "version_history": export.items(
            changes, "device_version_changes", "telemetry.version_history"
        ),
    }
