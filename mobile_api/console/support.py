"""Support pages: device search, the device page, disable and enable; the audit trail."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict

from mobile_api.console import bp, caller, requires
from mobile_api.errors import NotFound
from mobile_api.extensions import db
from mobile_api.pagination import paginate
from mobile_api.routes.admin import AuditArgsSchema, DeviceSearchArgsSchema, DisableSchema
from mobile_api.services import audit, privacy, support
from models import AuditEvent, Device, Platform, StaffRole

_DEVICE_SEARCH = DeviceSearchArgsSchema()
_AUDIT_FILTER = AuditArgsSchema()
_DISABLE = DisableSchema()
PAGE = 50


def filled(values: MultiDict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The named fields a form filled in (blank ones are left out), stripped."""
    return {name: values[name].strip() for name in names if values.get(name, "").strip()}


@bp.route("/devices")
@requires(StaffRole.SUPPORT)
def devices() -> Any:
    """Find devices by installation id, account id or platform."""
    query = filled(request.args, ("installation_id", "account_id", "platform", "cursor"))
    try:
        args = _DEVICE_SEARCH.load(query)
    except ma.ValidationError as invalid:
        return _search_page(query, [], None, errors=invalid.messages), 422
    items: Any = []
    next_cursor = None
    searched = any(name in args for name in ("installation_id", "account_id", "platform"))
    if searched:
        args.pop("limit")
        cursor = args.pop("cursor")
        items, next_cursor = paginate(
            db.session, support.search_query(**args), Device.id, PAGE, cursor
        )
    return _search_page(query, items, next_cursor, searched=searched)


def _search_page(
    query: dict[str, str],
    items: Any,
    next_cursor: str | None,
    *,
    errors: Any = None,
    searched: bool = True,
) -> str:
    return render_template(
        "console/devices.html",
        query=query,
        items=items,
        next_cursor=next_cursor,
        errors=errors or {},
        searched=searched,
        platforms=[p.value for p in Platform],
        mask=support.masked_push_token,
    )


def _device(device_id: str) -> Device:
    device = db.session.get(Device, device_id)
    if device is None:
        raise NotFound("No such device.")
    return device


@bp.route("/devices/<device_id>")
@requires(StaffRole.SUPPORT)
def device(device_id: str, errors: Any = None, status: int = 200) -> Any:
    """A device: state, masked push token, consent timeline, recent deliveries."""
    found = _device(device_id)
    page = render_template(
        "console/device.html",
        device=found,
        push_token=support.masked_push_token(found),
        terminated=privacy.is_terminated(db.session, found.account_id),
        consents=support.consent_timeline(db.session, found.id),
        deliveries=support.recent_deliveries(db.session, found.id),
        notifications=support.recent_notifications(db.session, found.id),
        done=request.args.get("done"),
        errors=errors or {},
    )
    return page, status


@bp.route("/devices/<device_id>/disable", methods=["POST"])
@requires(StaffRole.SUPPORT)
def disable_device(device_id: str) -> Any:
    """Stop every push to the device, with a reason and a ticket."""
    try:
        data = _DISABLE.load(filled(request.form, ("reason", "ticket")))
    except ma.ValidationError as invalid:
        return device(device_id, errors=invalid.messages, status=422)
    found = support.disable(
        db.session,
        device_id,
        reason=data["reason"],
        ticket=data.get("ticket"),
        caller=caller(),
    )
    if found is None:
        raise NotFound("No such device.")
    return redirect(url_for("console.device", device_id=device_id, done="disabled"), 303)


@bp.route("/devices/<device_id>/enable", methods=["POST"])
@requires(StaffRole.SUPPORT)
def enable_device(device_id: str) -> Any:
    """Let pushes reach the device again."""
    found = support.enable(db.session, device_id, caller())
    if found is None:
        raise NotFound("No such device.")
    return redirect(url_for("console.device", device_id=device_id, done="enabled"), 303)


@bp.route("/audit")
@requires(StaffRole.SUPPORT, StaffRole.PRIVACY)
def audit_trail() -> Any:
    """Audit events, newest first, filtered by actor, action or target."""
    query = filled(request.args, ("actor", "action", "target", "cursor"))
    try:
        args = _AUDIT_FILTER.load(query)
    except ma.ValidationError as invalid:
        return _audit_page(query, [], None, invalid.messages), 422
    items, next_cursor = paginate(
        db.session,
        privacy.audit_query(
            actor=args.get("actor"), action=args.get("action"), target=args.get("target")
        ),
        AuditEvent.id,
        PAGE,
        args["cursor"],
        descending=True,
    )
    return _audit_page(query, items, next_cursor, {})


def _audit_page(
    query: dict[str, str],
    items: Any,
    next_cursor: str | None,
    errors: Any,
    verified: Any = None,
) -> str:
    return render_template(
        "console/audit.html",
        query=query,
        items=items,
        next_cursor=next_cursor,
        errors=errors,
        verified=verified,
    )


@bp.route("/audit/verify", methods=["POST"])
@requires(StaffRole.ADMIN)
def audit_verify() -> Any:
    """Walk the whole hash chain and say whether it holds."""
    broken, checked = audit.verify(db.session)
    db.session.rollback()
    return _audit_page({}, [], None, {}, verified={"broken": broken, "checked": checked})
