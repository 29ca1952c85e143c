"""Support and privacy operations for staff: devices, audit trail, export, erasure, termination."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app
from flask.views import MethodView

from mobile_api.auth import auth_required, current_caller
from mobile_api.errors import NotFound
from mobile_api.extensions import db
from mobile_api.http_errors import ErrorSchema
from mobile_api.pagination import PageArgsSchema, page_schema, paginate
from mobile_api.routes import Blueprint
from mobile_api.routes.devices import AccountExportSchema, DeviceExportSchema, DeviceSchema
from mobile_api.routes.fields import Timestamp, printable
from mobile_api.services import privacy, support
from models import AuditEvent, Device, Platform, Role

blp = Blueprint(
    "admin", __name__, url_prefix="/v1/admin", description="Support and privacy (staff)"
)


class DeviceSearchArgsSchema(PageArgsSchema):
    """Filters of GET /v1/admin/devices; all optional, combined with AND."""

    installation_id = ma.fields.String(validate=printable(128))
    account_id = ma.fields.String(validate=printable(128))
    platform = ma.fields.String(validate=ma.validate.OneOf([p.value for p in Platform]))


class AdminDeviceSchema(DeviceSchema):
    """A device as support sees it: the push token masked, the disabled state shown."""

    disabled = ma.fields.Function(
        lambda device: device.disabled_at is not None, metadata={"type": "boolean"}
    )
    disabled_at = Timestamp(allow_none=True)
    disabled_reason = ma.fields.String(allow_none=True)
    disabled_ticket = ma.fields.String(allow_none=True)
    # Replaces the device's own field: staff never see a whole token.
    push_token = ma.fields.Function(  # type: ignore[assignment]
        support.masked_push_token,
        metadata={"type": "string", "nullable": True, "description": "Masked: only its tail"},
    )


AdminDevicePageSchema = page_schema(AdminDeviceSchema, "AdminDevicePage")


class DisableSchema(ma.Schema):
    """Body of POST /v1/admin/devices/{id}/disable."""

    reason = ma.fields.String(required=True, validate=printable(500))
    ticket = ma.fields.String(allow_none=True, validate=printable(128))


class EraseSchema(ma.Schema):
    """Optional body of the erasure endpoints."""

    reason = ma.fields.String(
        load_default="user_request", validate=ma.validate.OneOf(privacy.ERASURE_REASONS)
    )


class AuditArgsSchema(PageArgsSchema):
    """Filters of GET /v1/admin/audit; `target` may be a raw device or account id."""

    actor = ma.fields.String(validate=printable(64))
    action = ma.fields.String(validate=printable(64))
    target = ma.fields.String(validate=printable(128))


class AuditEventSchema(ma.Schema):
    """One audit event."""

    id = ma.fields.Integer(required=True)
    recorded_at = Timestamp(required=True)
    actor = ma.fields.String(required=True)
    action = ma.fields.String(required=True)
    target = ma.fields.String(allow_none=True)
    request_id = ma.fields.String(allow_none=True)
    details = ma.fields.Dict(required=True)
    prev_hash = ma.fields.String(required=True)
    hash = ma.fields.String(required=True)


AuditPageSchema = page_schema(AuditEventSchema, "AuditPage")


class TerminationSchema(ma.Schema):
    """An account's termination."""

    account_id = ma.fields.String(required=True)
    terminated_at = Timestamp(required=True)
    purge_due_at = Timestamp(
        required=True, metadata={"description": "When the purge run erases its data"}
    )
    devices = ma.fields.Integer(
        required=True, metadata={"description": "Devices of the account that stopped receiving"}
    )


_NOT_FOUND = {"schema": ErrorSchema, "description": "No such device or account"}


@blp.route("/devices")
class AdminDevices(MethodView):
    """Device search."""

    @auth_required(blp, Role.SUPPORT)
    @blp.arguments(DeviceSearchArgsSchema, location="query")
    @blp.response(200, AdminDevicePageSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Find devices by installation id, account id or platform (push tokens masked)."""
        limit, cursor = args.pop("limit"), args.pop("cursor")
        items, next_cursor = paginate(
            db.session, support.search_query(**args), Device.id, limit, cursor
        )
        return {"items": items, "next_cursor": next_cursor}


def _found(value: Any) -> Any:
    if value is None:
        raise NotFound()
    return value


@blp.route("/devices/<device_id>/disable")
class AdminDeviceDisable(MethodView):
    """Disable a device."""

    @auth_required(blp, Role.SUPPORT)
    @blp.arguments(DisableSchema)
    @blp.response(200, AdminDeviceSchema)
    @blp.alt_response(404, **_NOT_FOUND)
    def post(self, data: dict[str, Any], device_id: str) -> Any:
        """Stop every push to this device until it is enabled again."""
        return _found(
            support.disable(
                db.session,
                device_id,
                current_caller(),
                reason=data["reason"],
                ticket=data.get("ticket"),
            )
        )


@blp.route("/devices/<device_id>/enable")
class AdminDeviceEnable(MethodView):
    """Enable a device."""

    @auth_required(blp, Role.SUPPORT)
    @blp.response(200, AdminDeviceSchema)
    @blp.alt_response(404, **_NOT_FOUND)
    def post(self, device_id: str) -> Any:
        """Let pushes reach this device again."""
        return _found(support.enable(db.session, device_id, current_caller()))


@blp.route("/devices/<device_id>/export")
class AdminDeviceExport(MethodView):
    """Export a device."""

    @auth_required(blp, Role.PRIVACY)
    # Documented, not dumped (see DeviceExport in routes/devices.py).
    @blp.alt_response(200, schema=DeviceExportSchema, success=True, description="OK")
    @blp.alt_response(404, **_NOT_FOUND)
    def get(self, device_id: str) -> Any:
        """Everything held about this device, as one JSON document."""
        return _found(privacy.export_device(db.session, device_id, current_caller()))


@blp.route("/devices/<device_id>")
class AdminDevice(MethodView):
    """Erase a device."""

    @auth_required(blp, Role.PRIVACY)
    @blp.arguments(EraseSchema, required=False)
    @blp.response(204)
    @blp.alt_response(404, **_NOT_FOUND)
    def delete(self, data: dict[str, Any], device_id: str) -> None:
        """Erase this device and everything tied to it, now."""
        erased = privacy.erase_device(
            db.session, device_id, current_caller(), reason=data["reason"]
        )
        _found(erased or None)


@blp.route("/accounts/<account_id>/export")
class AdminAccountExport(MethodView):
    """Export an account."""

    @auth_required(blp, Role.PRIVACY)
    @blp.alt_response(200, schema=AccountExportSchema, success=True, description="OK")
    @blp.alt_response(404, **_NOT_FOUND)
    def get(self, account_id: str) -> Any:
        """Everything held about this account's devices, as one JSON document."""
        return _found(privacy.export_account(db.session, account_id, current_caller()))


@blp.route("/accounts/<account_id>")
class AdminAccount(MethodView):
    """Erase an account."""

    @auth_required(blp, Role.PRIVACY)
    @blp.arguments(EraseSchema, required=False)
    @blp.response(204)
    @blp.alt_response(404, **_NOT_FOUND)
    def delete(self, data: dict[str, Any], account_id: str) -> None:
        """Erase every device of this account and everything tied to them, now."""
        erased = privacy.erase_account(
            db.session, account_id, current_caller(), reason=data["reason"]
        )
        _found(erased)


@blp.route("/accounts/<account_id>/terminate")
class AdminAccountTerminate(MethodView):
    """Terminate an account."""

    @auth_required(blp, Role.PRIVACY)
    @blp.response(200, TerminationSchema)
    def post(self, account_id: str) -> Any:
        """Stop pushes to every device of the account now; erase its data after the purge delay."""
        return privacy.terminate(
            db.session,
            account_id,
            current_caller(),
            purge_after_days=int(current_app.config["PURGE_AFTER_DAYS"]),
        )


@blp.route("/audit")
class AdminAudit(MethodView):
    """The audit trail."""

    @auth_required(blp, Role.SUPPORT, Role.PRIVACY)
    @blp.arguments(AuditArgsSchema, location="query")
    @blp.response(200, AuditPageSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Audit events, newest first, filtered by actor, action or target."""
        stmt = privacy.audit_query(
            actor=args.get("actor"), action=args.get("action"), target=args.get("target")
        )
        items, next_cursor = paginate(
            db.session, stmt, AuditEvent.id, args["limit"], args["cursor"], descending=True
        )
        return {"items": items, "next_cursor": next_cursor}
