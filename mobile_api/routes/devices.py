"""Device registration and the device's own endpoints (device token)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app
from flask.views import MethodView

from mobile_api.auth import DEVICE, auth_required, current_caller, current_device
from mobile_api.extensions import db, device_limit_key, limiter
from mobile_api.http_errors import ErrorSchema
from mobile_api.pagination import PageArgsSchema, page_schema, paginate
from mobile_api.push import PROVIDERS
from mobile_api.routes import Blueprint
from mobile_api.routes.fields import (
    CLOCK,
    TIME_ZONE_DOC,
    VERSION,
    Locale,
    StrictBoolean,
    Timestamp,
    printable,
    validate_time_zone,
)
from mobile_api.services import devices as device_service
from mobile_api.services import export as export_service
from models import (
    ConsentRecord,
    ConsentSource,
    LocationPermission,
    Platform,
    PushPermission,
    Role,
)

blp = Blueprint("devices", __name__, url_prefix="/v1/devices", description="Devices (mobile app)")

_INSTALLATION_ID = ma.validate.Regexp(
    r"^[A-Za-z0-9._:-]{8,128}$", error="8–128 characters of A-Z a-z 0-9 . _ : -"
)
_PUSH_TOKEN = ma.validate.Regexp(
    r"^[\x21-\x7e]{1,4096}$", error="Up to 4096 printable ASCII characters."
)


# Documents the 429 of an endpoint under a rate limit.
_RATE_LIMITED = blp.alt_response(429, schema=ErrorSchema, description="Rate limited")


def _registration_limit() -> str:
    return str(current_app.config["RATELIMIT_REGISTRATION"])


def _device_limit() -> str:
    return str(current_app.config["RATELIMIT_DEVICE"])


class DeviceFieldsSchema(ma.Schema):
    """Fields the app reports about itself."""

    os_version = ma.fields.String(validate=VERSION)
    device_model = ma.fields.String(allow_none=True, validate=printable(64))
    app_version = ma.fields.String(allow_none=True, validate=VERSION)
    locale = Locale(allow_none=True, metadata={"description": "BCP 47 tag, e.g. id-ID"})
    timezone = ma.fields.String(
        allow_none=True,
        validate=validate_time_zone,
        metadata=TIME_ZONE_DOC,
    )
    push_token = ma.fields.String(
        allow_none=True,
        validate=_PUSH_TOKEN,
        metadata={
            "description": "FCM registration token, or the APNs device token (hex) with"
            " push_provider apns or apns_sandbox"
        },
    )
    push_provider = ma.fields.String(
        validate=ma.validate.OneOf(PROVIDERS),
        metadata={
            "description": "Whose token push_token is: fcm (default), apns, or apns_sandbox"
            " (debug builds); apns* only on ios, and a change needs its push_token"
        },
    )
    push_permission = ma.fields.String(
        allow_none=True, validate=ma.validate.OneOf([p.value for p in PushPermission])
    )
    location_permission = ma.fields.String(
        allow_none=True,
        validate=ma.validate.OneOf([p.value for p in LocationPermission]),
    )
    account_id = ma.fields.String(allow_none=True, validate=printable(128))


class DeviceRegisterSchema(DeviceFieldsSchema):
    """Body of POST /v1/devices."""

    installation_id = ma.fields.String(required=True, validate=_INSTALLATION_ID)
    platform = ma.fields.String(
        required=True, validate=ma.validate.OneOf([p.value for p in Platform])
    )
    os_version = ma.fields.String(required=True, validate=VERSION)


class DeviceCheckInSchema(DeviceFieldsSchema):
    """Body of PATCH /v1/devices/me: any subset of the device fields."""


class QuietHoursSchema(ma.Schema):
    """Quiet hours in the device's timezone; start == end means none."""

    start = ma.fields.String(required=True, validate=CLOCK, metadata={"example": "21:00"})
    end = ma.fields.String(required=True, validate=CLOCK, metadata={"example": "08:00"})


class ConsentsSchema(ma.Schema):
    """The user's three consents, as a device shows them."""

    promotional_push = ma.fields.Boolean(required=True)
    location_services = ma.fields.Boolean(required=True)
    analytics = ma.fields.Boolean(required=True)


class PreferencesSchema(ConsentsSchema):
    """The user's choices on the device: consents, category choices and quiet hours."""

    categories = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Boolean(),
        required=True,
        metadata={"description": "Every category the user may change, except promotions"},
    )
    quiet_hours = ma.fields.Nested(
        QuietHoursSchema,
        allow_none=True,
        required=True,
        metadata={"description": "null: the deployment's QUIET_HOURS apply"},
    )


class PreferencesUpdateSchema(ma.Schema):
    """Body of PUT /v1/devices/me/preferences: any preference, plus the policy seen."""

    promotional_push = StrictBoolean()
    location_services = StrictBoolean()
    analytics = StrictBoolean()
    categories = ma.fields.Dict(
        keys=ma.fields.String(validate=ma.validate.Length(min=1, max=40)),
        values=StrictBoolean(),
        validate=ma.validate.Length(max=100),
        metadata={"description": "Category key → enabled (promotions: use promotional_push)"},
    )
    quiet_hours = ma.fields.Nested(
        QuietHoursSchema,
        allow_none=True,
        metadata={"description": "null: the deployment's QUIET_HOURS apply"},
    )
    policy_version = ma.fields.String(
        allow_none=True,
        validate=printable(32),
        metadata={"description": "Privacy-policy version the user saw"},
    )


class DeviceSchema(ma.Schema):
    """A device as its own app sees it."""

    id = ma.fields.String(required=True)
    installation_id = ma.fields.String(required=True)
    platform = ma.fields.String(required=True)
    os_version = ma.fields.String(required=True)
    device_model = ma.fields.String(allow_none=True)
    app_version = ma.fields.String(allow_none=True)
    locale = ma.fields.String(allow_none=True)
    timezone = ma.fields.String(allow_none=True)
    push_token = ma.fields.String(allow_none=True)
    push_provider = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf(PROVIDERS),
        metadata={"description": "The service push_token belongs to"},
    )
    push_token_valid = ma.fields.Method(
        "_push_token_valid",
        dump_only=True,
        metadata={
            "type": "boolean",
            "nullable": True,
            "description": "False once FCM refused the token; null without a token",
        },
    )
    # The validators only document the values (this schema dumps, it never loads).
    push_permission = ma.fields.String(
        allow_none=True, validate=ma.validate.OneOf([p.value for p in PushPermission])
    )
    location_permission = ma.fields.String(
        allow_none=True, validate=ma.validate.OneOf([p.value for p in LocationPermission])
    )
    account_id = ma.fields.String(allow_none=True)
    preferences = ma.fields.Method(
        "_preferences",
        dump_only=True,
        metadata={"allOf": [{"$ref": "#/components/schemas/Consents"}]},
    )
    created_at = Timestamp(required=True)
    last_seen_at = Timestamp(required=True)

    def _push_token_valid(self, device: Any) -> bool | None:
        if device.push_token is None:
            return None
        return device.push_token_invalid_at is None

    def _preferences(self, device: Any) -> dict[str, bool]:
        return dict(device.preferences())


class RegistrationSchema(ma.Schema):
    """Response of POST /v1/devices: the device and its token, shown only here."""

    device = ma.fields.Nested(DeviceSchema, required=True)
    device_token = ma.fields.String(required=True)


class ConsentSchema(ma.Schema):
    """One entry of the consent ledger."""

    purpose = ma.fields.String(required=True)
    granted = ma.fields.Boolean(required=True)
    source = ma.fields.String(
        required=True, validate=ma.validate.OneOf([s.value for s in ConsentSource])
    )
    policy_version = ma.fields.String(allow_none=True)
    recorded_at = Timestamp(required=True)


ConsentPageSchema = page_schema(ConsentSchema, "ConsentPage")


class ExportedDeviceSchema(ma.Schema):
    """A device's stored fields, as an export shows them."""

    class Meta:
        # Documents services/export.py's field list, which grows with the model: a
        # field added there is exported (and allowed here) before it is described.
        unknown = ma.INCLUDE

    id = ma.fields.String(required=True)
    installation_id = ma.fields.String(required=True)
    platform = ma.fields.String(
        required=True, validate=ma.validate.OneOf([p.value for p in Platform])
    )
    os_version = ma.fields.String(required=True)
    device_model = ma.fields.String(required=True, allow_none=True)
    app_version = ma.fields.String(required=True, allow_none=True)
    locale = ma.fields.String(required=True, allow_none=True)
    timezone = ma.fields.String(required=True, allow_none=True)
    push_token = ma.fields.String(required=True, allow_none=True)
    push_provider = ma.fields.String(required=True, validate=ma.validate.OneOf(PROVIDERS))
    push_token_invalid_at = Timestamp(required=True, allow_none=True)
    push_permission = ma.fields.String(
        required=True,
        allow_none=True,
        validate=ma.validate.OneOf([p.value for p in PushPermission]),
    )
    location_permission = ma.fields.String(
        required=True,
        allow_none=True,
        validate=ma.validate.OneOf([p.value for p in LocationPermission]),
    )
    account_id = ma.fields.String(required=True, allow_none=True)
    disabled_at = Timestamp(required=True, allow_none=True)
    disabled_reason = ma.fields.String(required=True, allow_none=True)
    disabled_ticket = ma.fields.String(required=True, allow_none=True)
    created_at = Timestamp(required=True)
    updated_at = Timestamp(required=True)
    last_seen_at = Timestamp(required=True)


class DeviceDocumentSchema(ma.Schema):
    """Everything held about one device: its fields, preferences, consent history, and one
    more key per data section (deliveries, telemetry, ...)."""

    class Meta:
        # Documents the sections other modules add (services/export.py); never loads.
        unknown = ma.INCLUDE

    device = ma.fields.Nested(ExportedDeviceSchema, required=True)
    preferences = ma.fields.Nested(ConsentsSchema, required=True)
    consents = ma.fields.List(ma.fields.Nested(ConsentSchema), required=True)


class DeviceExportSchema(DeviceDocumentSchema):
    """Export of one device (GET /v1/devices/me/export, GET /v1/admin/devices/{id}/export)."""

    exported_at = Timestamp(required=True)


class AccountExportSchema(ma.Schema):
    """Export of an account: each of its devices, and its termination if any."""

    exported_at = Timestamp(required=True)
    account_id = ma.fields.String(required=True)
    terminated_at = Timestamp(required=True, allow_none=True)
    devices = ma.fields.List(ma.fields.Nested(DeviceDocumentSchema), required=True)


class DeviceTokenHeaderSchema(ma.Schema):
    """Headers of POST /v1/devices."""

    x_device_token = ma.fields.String(
        data_key="X-Device-Token",
        validate=ma.validate.Length(max=200),
        metadata={"description": "The device's own token: update and rotate instead of 409"},
    )


@blp.route("")
class DeviceRegistration(MethodView):
    """Register an installation."""

    @auth_required(blp, Role.APP)
    @limiter.limit(_registration_limit, methods=["POST"])
    @blp.arguments(DeviceTokenHeaderSchema, location="headers")
    @blp.arguments(DeviceRegisterSchema)
    @blp.response(201, RegistrationSchema)
    @blp.alt_response(200, schema=RegistrationSchema, description="Updated; token rotated")
    @blp.alt_response(409, schema=ErrorSchema, description="installation_exists")
    @blp.alt_response(429, schema=ErrorSchema, description="Rate limited")
    def post(self, headers: dict[str, Any], data: dict[str, Any]) -> Any:
        """Register this installation and receive its device token."""
        result = device_service.register(db.session, data, headers.get("x_device_token"))
        body = {"device": result.device, "device_token": result.device_token}
        return body, (201 if result.created else 200)


@blp.route("/me")
class DeviceMe(MethodView):
    """The calling device."""

    decorators = [limiter.limit(_device_limit, key_func=device_limit_key)]

    @auth_required(blp, DEVICE)
    @_RATE_LIMITED
    @blp.response(200, DeviceSchema)
    def get(self) -> Any:
        """The device with its current preferences."""
        return current_device()

    @auth_required(blp, DEVICE)
    @_RATE_LIMITED
    @blp.arguments(DeviceCheckInSchema, required=False)
    @blp.response(200, DeviceSchema)
    def patch(self, data: dict[str, Any]) -> Any:
        """Check in: report current OS facts, permissions and push token."""
        return device_service.check_in(db.session, current_device(), data)

    @auth_required(blp, DEVICE)
    @_RATE_LIMITED
    @blp.response(204)
    def delete(self) -> None:
        """Unregister: erase this device and everything tied to it."""
        device_service.erase(db.session, current_device().id, current_caller())


@blp.route("/me/preferences")
class DevicePreferences(MethodView):
    """The user's choices on this device."""

    decorators = [limiter.limit(_device_limit, key_func=device_limit_key)]

    @auth_required(blp, DEVICE)
    @_RATE_LIMITED
    @blp.response(200, PreferencesSchema)
    def get(self) -> Any:
        """Current preferences (all off until the user opts in)."""
        return device_service.preferences(db.session, current_device())

    @auth_required(blp, DEVICE)
    @_RATE_LIMITED
    @blp.arguments(PreferencesUpdateSchema, required=False)
    @blp.response(200, PreferencesSchema)
    def put(self, data: dict[str, Any]) -> Any:
        """Change preferences; every change is recorded in the consent ledger."""
        policy_version = data.pop("policy_version", None)
        extra: dict[str, Any] = {"category_choices": data.pop("categories", None)}
        if "quiet_hours" in data:
            extra["quiet_hours"] = data.pop("quiet_hours")
        return device_service.update_preferences(
            db.session, current_device(), data, policy_version, **extra
        )


@blp.route("/me/consents")
class DeviceConsents(MethodView):
    """The consent ledger of this device."""

    decorators = [limiter.limit(_device_limit, key_func=device_limit_key)]

    @auth_required(blp, DEVICE)
    @_RATE_LIMITED
    @blp.arguments(PageArgsSchema, location="query")
    @blp.response(200, ConsentPageSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Consent history, oldest first."""
        items, next_cursor = paginate(
            db.session,
            device_service.consents_query(current_device().id),
            ConsentRecord.id,
            args["limit"],
            args["cursor"],
        )
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/me/export")
class DeviceExport(MethodView):
    """Everything held about this device."""

    decorators = [limiter.limit(_device_limit, key_func=device_limit_key)]

    @auth_required(blp, DEVICE)
    @_RATE_LIMITED
    # Documented, not dumped: the document goes out as the service built it, with
    # every section other modules register.
    @blp.alt_response(200, schema=DeviceExportSchema, success=True, description="OK")
    def get(self) -> Any:
        """Export everything the service holds about this device as one JSON document."""
        return export_service.export_device(db.session, current_device())
