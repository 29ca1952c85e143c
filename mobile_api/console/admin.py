"""Admin pages: staff accounts and API keys (their secrets shown once), categories."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import marshmallow as ma
from flask import current_app, render_template, request

from mobile_api.cli_staff import sign_in_link
from mobile_api.console import bp, caller, requires
from mobile_api.errors import DomainError, NotFound
from mobile_api.extensions import db
from mobile_api.http_errors import domain_error_message, domain_error_row
from mobile_api.routes.categories import CategoryPutSchema
from mobile_api.services import categories as category_service
from mobile_api.services import keys as key_service
from mobile_api.services import staff as staff_service
from models import CategoryKind, InterruptionLevel, Role, StaffRole


def _link_ttl() -> timedelta:
    return timedelta(hours=int(current_app.config["CONSOLE_LINK_TTL_HOURS"]))


def _staff_page(status: int = 200, **context: Any) -> Any:
    context.setdefault("errors", {})
    return (
        render_template(
            "console/staff.html",
            members=staff_service.list_members(db.session),
            roles=[r.value for r in StaffRole],
            **context,
        ),
        status,
    )


@bp.route("/admin/staff")
@requires(StaffRole.ADMIN)
def staff() -> Any:
    """Staff accounts: create, re-role, disable, enable, reset."""
    return _staff_page()


@bp.route("/admin/staff", methods=["POST"])
@requires(StaffRole.ADMIN)
def staff_create() -> Any:
    """Create a staff member; their one-time link is shown on this page, once."""
    email, role = request.form.get("email", ""), request.form.get("role", "")
    if role not in {r.value for r in StaffRole}:
        return _staff_page(422, errors={"role": ["Choose a role."]})
    try:
        member, secret = staff_service.create(
            db.session, email, role, link_ttl=_link_ttl(), caller=caller()
        )
    except DomainError as refused:
        db.session.rollback()
        code = domain_error_row(refused)[0]
        return _staff_page(code, errors={"email": [domain_error_message(refused)]})
    return _staff_page(link=(member.email, sign_in_link(secret)))


@bp.route("/admin/staff/change", methods=["POST"])
@requires(StaffRole.ADMIN)
def staff_change() -> Any:
    """Apply one change (role, disable, enable, reset) to one staff member."""
    email = request.form.get("email", "")
    change = request.form.get("change", "")
    actor = caller()
    if change == "role":
        role = request.form.get("role", "")
        if role not in {r.value for r in StaffRole}:
            return _staff_page(422, errors={"role": ["Choose a role."]})
        staff_service.set_role(db.session, email, role, actor)
        return _staff_page(done=f"{email} now has role {role}.")
    if change == "disable":
        staff_service.disable(db.session, email, actor)
        return _staff_page(done=f"Disabled {email}; their sessions have ended.")
    if change == "enable":
        staff_service.enable(db.session, email, actor)
        return _staff_page(done=f"Enabled {email}.")
    if change == "reset":
        secret = staff_service.reset(db.session, email, link_ttl=_link_ttl(), caller=actor)
        return _staff_page(link=(email, sign_in_link(secret)))
    raise NotFound("No such change.")


def _keys_page(status: int = 200, **context: Any) -> Any:
    context.setdefault("errors", {})
    return (
        render_template(
            "console/keys.html",
            keys=key_service.list_keys(db.session),
            roles=[r.value for r in Role],
            **context,
        ),
        status,
    )


@bp.route("/admin/keys")
@requires(StaffRole.ADMIN)
def keys() -> Any:
    """API keys: list, create (secret shown once), revoke."""
    return _keys_page()


@bp.route("/admin/keys", methods=["POST"])
@requires(StaffRole.ADMIN)
def key_create() -> Any:
    """Create a key; its secret is on this page only."""
    role = request.form.get("role", "")
    name = request.form.get("name", "").strip()
    errors: dict[str, list[str]] = {}
    if role not in {r.value for r in Role}:
        errors["role"] = ["Choose a role."]
    if not name or len(name) > 128:
        errors["name"] = ["Give a name of 1–128 characters."]
    if errors:
        return _keys_page(422, errors=errors)
    key, secret = key_service.create(db.session, role, name, caller())
    return _keys_page(created=(key, secret))


@bp.route("/admin/keys/<key_id>/revoke", methods=["POST"])
@requires(StaffRole.ADMIN)
def key_revoke(key_id: str) -> Any:
    """Revoke a key at once."""
    key = key_service.revoke(db.session, key_id, caller())
    if key is None:
        raise NotFound("No such key.")
    return _keys_page(done=f"Revoked key {key.id} ({key.name}).")


_CATEGORY = CategoryPutSchema()
_CATEGORY_KEY = re.compile(category_service.KEY_PATTERN)


def _categories_page(status: int = 200, **context: Any) -> Any:
    context.setdefault("errors", {})
    context.setdefault("form", {})
    return (
        render_template(
            "console/categories.html",
            categories=category_service.list_all(db.session),
            kinds=[k.value for k in CategoryKind],
            levels=[level.value for level in InterruptionLevel],
            **context,
        ),
        status,
    )


@bp.route("/admin/categories")
@requires(StaffRole.ADMIN)
def categories() -> Any:
    """Notification categories: the catalogue, and a form to create or update one."""
    return _categories_page()


@bp.route("/admin/categories", methods=["POST"])
@requires(StaffRole.ADMIN)
def category_put() -> Any:
    """Create or update a category (its kind is fixed once created)."""
    form = {k: v.strip() for k, v in request.form.items() if k != "csrf_token"}
    key = form.pop("key", "")
    body: dict[str, Any] = {k: v for k, v in form.items() if v and k not in _FLAGS}
    for flag in _FLAGS:
        body[flag] = bool(request.form.get(flag))
    errors: dict[str, list[str]] = {}
    if not _CATEGORY_KEY.match(key):
        errors["key"] = ["[a-z][a-z0-9_]{1,39}, e.g. order_updates."]
    try:
        data = _CATEGORY.load(body)
    except ma.ValidationError as invalid:
        messages: dict[str, Any] = dict(invalid.messages)  # type: ignore[arg-type]
        errors.update({k: [str(m) for m in v] for k, v in messages.items()})
    if errors:
        return _categories_page(422, errors=errors, form={"key": key, **form})
    try:
        category, created = category_service.put(db.session, key, data, caller())
    except DomainError as refused:
        db.session.rollback()
        code = domain_error_row(refused)[0]
        message = domain_error_message(refused)
        return _categories_page(code, errors={"kind": [message]}, form={"key": key, **form})
    verb = "Created" if created else "Updated"
    return _categories_page(done=f"{verb} category {category.key}.")


_FLAGS = ("default_enabled", "user_can_opt_out")
