"""Privacy pages: export a device or an account, erase either, terminate an account."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Response, current_app, render_template, request

from mobile_api.console import bp, caller, requires
from mobile_api.errors import NotFound
from mobile_api.extensions import db
from mobile_api.services import privacy
from models import AccountTermination, StaffRole

KINDS = ("device", "account")


def _form() -> dict[str, str]:
    return {name: value.strip() for name, value in request.form.items() if name != "csrf_token"}


def _page(status: int = 200, **context: Any) -> Any:
    purge_after = timedelta(days=int(current_app.config["PURGE_AFTER_DAYS"]))
    pending = db.session.scalars(
        sa.select(AccountTermination).order_by(AccountTermination.terminated_at).limit(50)
    ).all()
    context.setdefault("errors", {})
    context.setdefault("form", {})
    return (
        render_template(
            "console/privacy.html",
            reasons=privacy.ERASURE_REASONS,
            pending=[(t, t.terminated_at + purge_after) for t in pending],
            **context,
        ),
        status,
    )


@bp.route("/privacy")
@requires(StaffRole.PRIVACY)
def privacy_page() -> Any:
    """Export, erasure and termination forms, and the terminations awaiting purge."""
    return _page()


def _kind_and_id(form: dict[str, str]) -> tuple[str, str, dict[str, list[str]]]:
    kind, identifier = form.get("kind", ""), form.get("id", "")
    errors: dict[str, list[str]] = {}
    if kind not in KINDS:
        errors["kind"] = ["Choose device or account."]
    if not identifier or len(identifier) > 128:
        errors["id"] = ["Give the id (1–128 characters)."]
    return kind, identifier, errors


@bp.route("/privacy/export", methods=["POST"])
@requires(StaffRole.PRIVACY)
def privacy_export() -> Any:
    """Download everything held about a device or an account, as JSON (audited)."""
    form = _form()
    kind, identifier, errors = _kind_and_id(form)
    if errors:
        return _page(422, errors=errors, form=form, section="export")
    export = privacy.export_device if kind == "device" else privacy.export_account
    document = export(db.session, identifier, caller())
    if document is None:
        raise NotFound(f"No such {kind}.")
    body = json.dumps(document, indent=2, ensure_ascii=False, default=str)
    return Response(
        body,
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="{kind}-export.json"'},
    )


@bp.route("/privacy/erase", methods=["POST"])
@requires(StaffRole.PRIVACY)
def privacy_erase() -> Any:
    """Erase a device or an account now, once its id is typed again to confirm."""
    form = _form()
    kind, identifier, errors = _kind_and_id(form)
    reason = form.get("reason", "")
    if reason not in privacy.ERASURE_REASONS:
        errors["reason"] = ["Choose a reason."]
    if not errors and form.get("confirm") != identifier:
        errors["confirm"] = ["Type the id exactly as above to confirm the erasure."]
    if errors:
        return _page(422, errors=errors, form=form, section="erase")
    if kind == "device":
        found = privacy.erase_device(db.session, identifier, caller(), reason=reason)
        erased = 1 if found else None
    else:
        erased = privacy.erase_account(db.session, identifier, caller(), reason=reason)
    if erased is None:
        raise NotFound(f"No such {kind}.")
    noun = "device" if erased == 1 else "devices"
    return _page(done=f"Erased the {kind} ({erased} {noun}).")


@bp.route("/privacy/terminate", methods=["POST"])
@requires(StaffRole.PRIVACY)
def privacy_terminate() -> Any:
    """Terminate an account: no more pushes now, its data purged after the delay."""
    form = _form()
    account_id = form.get("account_id", "")
    errors: dict[str, list[str]] = {}
    if not account_id or len(account_id) > 128:
        errors["account_id"] = ["Give the account id (1–128 characters)."]
    elif form.get("terminate_confirm") != account_id:
        errors["terminate_confirm"] = ["Type the account id exactly as above to confirm."]
    if errors:
        return _page(422, errors=errors, form=form, section="terminate")
    termination = privacy.terminate(
        db.session,
        account_id,
        caller(),
        purge_after_days=int(current_app.config["PURGE_AFTER_DAYS"]),
    )
    return _page(termination=termination)
