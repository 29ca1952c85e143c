"""App events from devices (device token) and aggregate device insights (marketing)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any

import marshmallow as ma
from flask.views import MethodView

from mobile_api.auth import DEVICE, auth_required, current_device
from mobile_api.extensions import db, device_limit_key, limiter
from mobile_api.http_errors import ErrorSchema
from mobile_api.routes import Blueprint
from mobile_api.routes.devices import _device_limit
from mobile_api.routes.fields import Timestamp, printable
from mobile_api.services import insights as insight_service
from mobile_api.services import telemetry as telemetry_service
from models import Role, utcnow

blp = Blueprint("telemetry", __name__, url_prefix="/v1", description="Telemetry and insights")

MAX_BATCH = 100
MAX_PROPERTIES = 20
MAX_PROPERTIES_BYTES = 4096
MAX_FUTURE = timedelta(hours=24)
MAX_PAST = timedelta(days=30)

_NAME = ma.validate.Regexp(
    r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$",
    error="1–64 characters of A-Z a-z 0-9 _ . : -, starting with a letter, e.g. app_open.",
)
_PROPERTY_KEY = ma.validate.Regexp(
    r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$",
    error="1–64 characters of A-Z a-z 0-9 _ . -, not starting with a digit.",
)


def _validate_occurred_at(value: Any) -> None:
    now = utcnow()
    if value > now + MAX_FUTURE:
        raise ma.ValidationError("Must not be more than 24 hours in the future.")
    if value < now - MAX_PAST:
        raise ma.ValidationError("Must not be more than 30 days in the past.")


def _validate_properties(value: dict[str, Any]) -> None:
    if len(value) > MAX_PROPERTIES:
        raise ma.ValidationError(f"At most {MAX_PROPERTIES} properties.")
    for item in value.values():
        if isinstance(item, dict | list):
            raise ma.ValidationError("Properties must be flat: string, number, boolean or null.")
        if isinstance(item, float) and not math.isfinite(item):
            raise ma.ValidationError("Numbers must be finite.")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PROPERTIES_BYTES:
        raise ma.ValidationError(f"At most {MAX_PROPERTIES_BYTES} bytes as JSON.")


class TelemetryEventSchema(ma.Schema):
    """One app event."""

    event_id = ma.fields.String(
        validate=printable(64),
        metadata={
            "description": "Client-chosen id; an id this device already sent is not stored again"
        },
    )
    name = ma.fields.String(required=True, validate=_NAME)
    occurred_at = ma.fields.AwareDateTime(
        required=True,
        validate=_validate_occurred_at,
        metadata={"description": "RFC 3339; at most 24 h ahead of and 30 days behind the server"},
    )
    properties = ma.fields.Dict(
        keys=ma.fields.String(validate=_PROPERTY_KEY),
        values=ma.fields.Raw(allow_none=True),
        validate=_validate_properties,
        metadata={"description": f"Flat: ≤ {MAX_PROPERTIES} keys, ≤ {MAX_PROPERTIES_BYTES} bytes"},
    )


_EVENT_FIELDS = frozenset(TelemetryEventSchema().fields)
_EVENT_ID = printable(64)


def _plainly_valid(event: Any, earliest: datetime, latest: datetime) -> dict[str, Any] | None:
    """The event as the schema would load it, if it passes every rule; else None."""
    if type(event) is not dict or not event.keys() <= _EVENT_FIELDS:
        return None
    name, occurred_at = event.get("name"), event.get("occurred_at")
    if type(name) is not str or type(occurred_at) is not str:
        return None
    _NAME(name)
    when = datetime.fromisoformat(occurred_at)  # as marshmallow's AwareDateTime parses
    if when.tzinfo is None or not earliest <= when <= latest:
        return None
    loaded = {"name": name, "occurred_at": when}
    if "event_id" in event:
        if type(event["event_id"]) is not str:
            return None
        for validator in _EVENT_ID:
            validator(event["event_id"])
        loaded["event_id"] = event["event_id"]
    if "properties" in event:
        properties = event["properties"]
        if type(properties) is not dict:
            return None
        for key in properties:
            _PROPERTY_KEY(key)  # JSON object keys are always strings
        _validate_properties(properties)
        loaded["properties"] = dict(properties)
    return loaded


class EventList(ma.fields.List[Any]):
    """A list of events, checked without marshmallow's per-field machinery when plainly valid.

    Ingestion is the hottest path of the service and a 100-event batch costs
    marshmallow several milliseconds. Valid batches pass the same rules here in
    a fraction of that; any doubt falls back to the schema, which stays the one
    authority on what is valid and what the errors say.
    """

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> list[Any]:
        if isinstance(value, list) and 0 < len(value) <= MAX_BATCH:
            now = utcnow()
            try:
                events = [_plainly_valid(e, now - MAX_PAST, now + MAX_FUTURE) for e in value]
            except (ma.ValidationError, ValueError, TypeError):
                events = [None]
            if None not in events:
                return events
        return super()._deserialize(value, attr, data, **kwargs)


class TelemetryBatchSchema(ma.Schema):
    """Body of POST /v1/telemetry/events."""

    events = EventList(
        ma.fields.Nested(TelemetryEventSchema),
        required=True,
        validate=ma.validate.Length(min=1, max=MAX_BATCH),
    )


class IngestionSchema(ma.Schema):
    """How a batch was received."""

    accepted = ma.fields.Integer(
        required=True,
        metadata={"description": "Events the service now holds, including repeats of stored ids"},
    )
    dropped = ma.fields.Integer(required=True, metadata={"description": "Events not stored"})
    reason = ma.fields.String(
        allow_none=True,
        required=True,
        metadata={
            "description": "Why events were dropped: analytics_consent_off, account_terminated"
        },
    )


class GroupSchema(ma.Schema):
    """One group of active devices; "other" holds every group under min_group_size."""

    platform = ma.fields.String()
    os_version = ma.fields.String()
    app_version = ma.fields.String(allow_none=True)
    devices = ma.fields.Integer(required=True)


class OptInSchema(ma.Schema):
    """How many active devices allow a purpose, and what share of all active devices.

    Both are null when fewer than 5 devices allow it, or fewer than 5 do not: a group
    that small could single someone out.
    """

    devices = ma.fields.Integer(required=True, allow_none=True)
    rate = ma.fields.Float(allow_none=True, required=True)


class ChangeCountSchema(ma.Schema):
    """Version changes reported in the window, and by how many devices.

    Both are null when fewer than 5 devices changed: too few to show without
    singling someone out.
    """

    changes = ma.fields.Integer(required=True, allow_none=True)
    devices = ma.fields.Integer(required=True, allow_none=True)


class VersionChangesSchema(ma.Schema):
    """OS and app version changes of the last `days` days."""

    days = ma.fields.Integer(required=True)
    os_version = ma.fields.Nested(ChangeCountSchema, required=True)
    app_version = ma.fields.Nested(ChangeCountSchema, required=True)


class DeviceInsightsSchema(ma.Schema):
    """Aggregates over active devices (not disabled, account not terminated)."""

    generated_at = Timestamp(required=True)
    min_group_size = ma.fields.Integer(required=True)
    active_devices = ma.fields.Integer(required=True)
    by_platform = ma.fields.List(ma.fields.Nested(GroupSchema), required=True)
    by_os_version = ma.fields.List(ma.fields.Nested(GroupSchema), required=True)
    by_app_version = ma.fields.List(ma.fields.Nested(GroupSchema), required=True)
    opt_in = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Nested(OptInSchema),
        required=True,
        metadata={
            "description": "promotional_push, location_services, analytics, "
            "os_push_permission (granted or provisional), "
            "os_location_permission (precise or approximate)"
        },
    )
    seen_within_days = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.Integer(), required=True
    )
    version_changes = ma.fields.Nested(VersionChangesSchema, required=True)


@blp.route("/telemetry/events")
class TelemetryEvents(MethodView):
    """App events of the calling device."""

    decorators = [limiter.limit(_device_limit, key_func=device_limit_key)]

    @auth_required(blp, DEVICE)
    @blp.arguments(TelemetryBatchSchema)
    @blp.response(202, IngestionSchema)
    @blp.alt_response(429, schema=ErrorSchema, description="Rate limited")
    def post(self, data: dict[str, Any]) -> Any:
        """Send a batch of 1–100 app events; stored whole or not at all."""
        return telemetry_service.ingest(db.session, current_device(), data["events"])


@blp.route("/insights/devices")
class DeviceInsights(MethodView):
    """Aggregates over the device fleet."""

    @auth_required(blp, Role.MARKETING)
    @blp.response(200, DeviceInsightsSchema)
    def get(self) -> Any:
        """Active devices by platform and version, opt-in rates and recency; aggregates only."""
        return insight_service.device_insights(db.session)
