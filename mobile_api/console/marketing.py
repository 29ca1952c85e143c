"""Marketing pages: campaign list, composer with preview, campaign page, test send, insights."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from flask import current_app, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict

from mobile_api import tasks
from mobile_api.console import bp, caller, requires
from mobile_api.console.support import PAGE, filled
from mobile_api.errors import CampaignAlreadySent
from mobile_api.extensions import db
from mobile_api.pagination import paginate
from mobile_api.routes.campaigns import (
    CampaignCreateSchema,
    CampaignUpdateSchema,
    DeliveryArgsSchema,
)
from mobile_api.services import audience as aud
from mobile_api.services import campaigns as campaign_service
from mobile_api.services import categories as category_service
from mobile_api.services import insights as insights_service
from mobile_api.services.dispatch import Settings
from mobile_api.services.messaging import FREQUENCY_CAPPED
from models import (
    Campaign,
    CampaignStatus,
    CategoryKind,
    Delivery,
    Platform,
    StaffRole,
)

_CREATE = CampaignCreateSchema()
_UPDATE = CampaignUpdateSchema()
_DELIVERIES = DeliveryArgsSchema()
_LIST_SPLIT = re.compile(r"[\s,]+")
_TEXT_FIELDS = (
    "name",
    "category_key",
    "title",
    "body",
    "collapse_key",
    "priority",
    "default_locale",
    "image_url",
    "link",
    "sound",
    "local_time",
    "fallback_timezone",
)
_AUDIENCE_LISTS = ("app_versions", "locales", "account_ids", "device_ids")
_INTEGERS = {"ttl_seconds": None, "badge": None, "last_seen_within_days": "audience"}
# ASCII digits only (str.isdigit() also takes "²", which int() refuses), and not so many
# that int() refuses to convert them (past 4300); none of these fields goes near 18.
_MAX_DIGITS = 18


def _words(text: str) -> list[str]:
    return [word for word in _LIST_SPLIT.split(text.strip()) if word]


def campaign_request(form: MultiDict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The composer's form as the body POST /v1/campaigns takes, and form-level errors.

    Lists are typed one item a line (or comma-separated), data as key=value lines;
    the API's own schema then validates the result.
    """
    body: dict[str, Any] = filled(form, _TEXT_FIELDS)
    errors: dict[str, list[str]] = {}
    audience: dict[str, Any] = {}
    platforms = [p for p in form.getlist("platforms") if p]
    if platforms:
        audience["platforms"] = platforms
    for name in _AUDIENCE_LISTS:
        words = _words(form.get(name, ""))
        if words:
            audience[name] = words
    if form.get("min_os_version", "").strip():
        audience["min_os_version"] = form["min_os_version"].strip()
    for name, where in _INTEGERS.items():
        raw = form.get(name, "").strip()
        if not raw:
            continue
        if not (raw.isascii() and raw.isdigit()):
            errors[name] = ["A whole number."]
            continue
        if len(raw.lstrip("0")) > _MAX_DIGITS:
            errors[name] = ["Too large a number."]
            continue
        (audience if where == "audience" else body)[name] = int(raw)
    data: dict[str, str] = {}
    for line in form.get("data", "").splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            errors["data"] = ["One key=value a line."]
            break
        data[key.strip()] = value.strip()
    if data:
        body["data"] = data
    content: dict[str, dict[str, str]] = {}
    for line in form.get("content", "").splitlines():
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split("|", 2)]
        if len(parts) != 3 or not all(parts):
            errors["content"] = ["One language a line: tag | title | body."]
            break
        content[parts[0]] = {"title": parts[1], "body": parts[2]}
    if content:
        body["content"] = content
    send_at = form.get("send_at", "").strip()
    if send_at:
        # datetime-local sends a wall-clock time without a zone; the form says it is UTC.
        body["send_at"] = send_at + (":00" if len(send_at) == 16 else "") + "+00:00"
    if audience:
        body["audience"] = audience
    return body, errors


def _validated(
    form: MultiDict[str, str], schema: ma.Schema = _CREATE, body: dict[str, Any] | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    errors: dict[str, Any] = {}
    if body is None:
        body, errors = campaign_request(form)
    try:
        data = schema.load(body)
    except ma.ValidationError as invalid:
        messages: dict[str, Any] = dict(invalid.messages)  # type: ignore[arg-type]
        # Nested audience errors are shown beside their own fields.
        messages.update(messages.pop("audience", None) or {})
        errors.update({name: _flat(value) for name, value in messages.items()})
    return (None if errors else data), errors


def _flat(messages: Any) -> list[str]:
    if isinstance(messages, dict):
        return [text for value in messages.values() for text in _flat(value)]
    if isinstance(messages, list):
        return [text for value in messages for text in _flat(value)]
    return [str(messages)]


@bp.route("/campaigns")
@requires(StaffRole.MARKETING)
def campaigns() -> Any:
    """Every campaign, newest first, with its status and counts."""
    status = request.args.get("status", "").strip()
    stmt = sa.select(Campaign)
    if status in {s.value for s in CampaignStatus}:
        stmt = stmt.where(Campaign.status == status)
    else:
        status = ""
    items, next_cursor = paginate(
        db.session, stmt, Campaign.id, PAGE, request.args.get("cursor") or None, descending=True
    )
    rows = [(c, campaign_service.counts(db.session, c)) for c in items]
    return render_template(
        "console/campaigns.html",
        rows=rows,
        next_cursor=next_cursor,
        status=status,
        statuses=[s.value for s in CampaignStatus],
    )


def _caps() -> Any:
    return Settings.from_config(current_app.config).caps


def _composer(form: MultiDict[str, str], status: int = 200, **context: Any) -> Any:
    context.setdefault("errors", {})
    choices = [
        c for c in category_service.list_all(db.session) if c.kind != CategoryKind.TRANSACTIONAL
    ]
    return (
        render_template(
            "console/compose.html",
            form=form,
            platforms=[p.value for p in Platform],
            categories=choices,
            reasons=[*aud.EXCLUSION_REASONS, FREQUENCY_CAPPED],
            **context,
        ),
        status,
    )


@bp.route("/campaigns/new", methods=["GET", "POST"])
@requires(StaffRole.MARKETING)
def compose() -> Any:
    """Compose a campaign; "Preview" counts the audience, "Create draft" saves it."""
    if request.method == "GET":
        return _composer(MultiDict({"category_key": "promotions", "priority": "normal"}))
    data, errors = _validated(request.form)
    if data is None:
        return _composer(request.form, 422, errors=errors)
    if request.form.get("action") == "preview":
        # An unsaved campaign: the service counts from its category and audience alone.
        preview = campaign_service.preview_unsaved(db.session, data, _caps())
        return _composer(request.form, preview=preview)
    campaign = campaign_service.create(
        db.session,
        data,
        caller(),
    )
    return redirect(url_for("console.campaign", campaign_id=campaign.id, done="created"), 303)


# Cleared in the editor: the PATCH body says so with null (the fields the API lets be
# null) or empty, not by leaving the field out (which keeps it).
_CLEARED: dict[str, Any] = {
    **{name: None for name, field in _UPDATE.fields.items() if field.allow_none},
    "data": {},
    "content": {},
    "audience": {},
    "fallback_timezone": "UTC",
}
_REQUIRED = ("name", "title", "body")


def campaign_form(found: Campaign) -> MultiDict[str, str]:
    """A saved campaign as the composer's form (the inverse of campaign_request)."""
    form: MultiDict[str, str] = MultiDict()
    for name in _TEXT_FIELDS:
        value = getattr(found, name)
        if value is not None:
            form[name] = str(value)
    for name in ("ttl_seconds", "badge"):
        if getattr(found, name) is not None:
            form[name] = str(getattr(found, name))
    if found.send_at is not None:
        form["send_at"] = found.send_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    data = {k: v for k, v in (found.data or {}).items() if not (k == "link" and v == found.link)}
    form["data"] = "\n".join(f"{key}={value}" for key, value in data.items())
    form["content"] = "\n".join(
        f"{tag} | {text['title']} | {text['body']}" for tag, text in (found.content or {}).items()
    )
    audience = found.audience or {}
    form.setlist("platforms", list(audience.get("platforms", [])))
    for name in _AUDIENCE_LISTS:
        form[name] = "\n".join(audience.get(name, []))
    for name in ("min_os_version", "last_seen_within_days"):
        if audience.get(name) is not None:
            form[name] = str(audience[name])
    return form


def _edits(form: MultiDict[str, str], scheduled: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The editor's form as the body PATCH /v1/campaigns/{id} takes, and form-level errors."""
    body, errors = campaign_request(form)
    for name in _REQUIRED:
        if name not in body:
            errors[name] = ["Missing data for required field."]
    body = {**_CLEARED, **body}
    if scheduled:  # fixed once scheduled (the form shows them, not as fields)
        for name in ("audience", "category", "category_key"):
            body.pop(name, None)
    return body, errors


def _editable(campaign_id: str) -> Campaign:
    found = campaign_service.get(db.session, campaign_id)
    if found.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
        raise CampaignAlreadySent("This campaign has started sending; it can no longer be edited.")
    return found


@bp.route("/campaigns/<campaign_id>/edit", methods=["GET", "POST"])
@requires(StaffRole.MARKETING)
def edit_campaign(campaign_id: str) -> Any:
    """Edit a draft, or a scheduled campaign before it starts, through the API's PATCH rules."""
    found = _editable(campaign_id)
    scheduled = found.status == CampaignStatus.SCHEDULED
    if request.method == "GET":
        return _composer(campaign_form(found), editing=found)
    if request.form.get("action") == "preview":
        return _preview_edit(found, scheduled)
    body, errors = _edits(request.form, scheduled)
    data, refused = _validated(request.form, _UPDATE, body)
    errors.update(refused)
    if data is None or errors:
        form: MultiDict[str, str] = request.form
        if scheduled:  # what cannot change is shown as saved
            form = MultiDict([*request.form.items(multi=True), *_fixed_fields(found)])
        return _composer(form, 422, errors=errors, editing=found)
    campaign_service.update(db.session, campaign_id, data, caller())
    return redirect(url_for("console.campaign", campaign_id=campaign_id, done="saved"), 303)


def _preview_edit(found: Campaign, scheduled: bool) -> Any:
    """Count the audience of the campaign as edited, without saving it."""
    form: MultiDict[str, str] = request.form
    if scheduled:  # its audience and category are the saved ones
        form = MultiDict([*request.form.items(multi=True), *_fixed_fields(found)])
    data, errors = _validated(form)
    if data is None:
        return _composer(form, 422, errors=errors, editing=found)
    preview = campaign_service.preview_unsaved(db.session, data, _caps())
    return _composer(form, preview=preview, editing=found)


def _fixed_fields(found: Campaign) -> list[tuple[str, str]]:
    saved = campaign_form(found)
    names = ("category_key", "platforms", "min_os_version", "last_seen_within_days")
    return [(k, v) for k, v in saved.items(multi=True) if k in (*names, *_AUDIENCE_LISTS)]


@bp.route("/campaigns/<campaign_id>")
@requires(StaffRole.MARKETING)
def campaign(campaign_id: str, status: int = 200, **context: Any) -> Any:
    """A campaign: progress and counts, deliveries, explain for one device, actions."""
    found = campaign_service.get(db.session, campaign_id)
    query = filled(request.args, ("status", "cursor"))
    try:
        args = _DELIVERIES.load(query)
    except ma.ValidationError:
        query, args = {}, _DELIVERIES.load({})
    deliveries, next_cursor = paginate(
        db.session,
        campaign_service.deliveries_query(campaign_id, args.get("status")),
        Delivery.id,
        PAGE,
        args["cursor"],
        within=Delivery.campaign_id,
    )
    explain_id = request.args.get("explain", "").strip()
    explained = None
    if explain_id:
        explained = campaign_service.explain(db.session, found, explain_id[:26])
    counts = campaign_service.counts(db.session, found)
    context.setdefault("errors", {})
    return (
        render_template(
            "console/campaign.html",
            campaign=found,
            counts=counts,
            suppressed=sum(counts["suppressed"].values()),
            # Scheduled campaigns may wait days: only those being sent refresh themselves.
            active=found.status in (CampaignStatus.QUEUED, CampaignStatus.SENDING),
            deliveries=deliveries,
            next_cursor=next_cursor,
            query=query,
            explain_id=explain_id,
            explained=explained,
            done=request.args.get("done"),
            **context,
        ),
        status,
    )


@bp.route("/campaigns/<campaign_id>/send", methods=["POST"])
@requires(StaffRole.MARKETING)
def send_campaign(campaign_id: str) -> Any:
    """Queue the campaign for the dispatcher (once)."""
    sent = campaign_service.send(
        db.session,
        campaign_id,
        caller(),
    )
    tasks.notify_queued(current_app, sent.id)
    return redirect(url_for("console.campaign", campaign_id=campaign_id, done="queued"), 303)


@bp.route("/campaigns/<campaign_id>/cancel", methods=["POST"])
@requires(StaffRole.MARKETING)
def cancel_campaign(campaign_id: str) -> Any:
    """Stop everything not yet handed to FCM."""
    campaign_service.cancel(
        db.session,
        campaign_id,
        caller(),
    )
    return redirect(url_for("console.campaign", campaign_id=campaign_id, done="cancelled"), 303)


@bp.route("/campaigns/<campaign_id>/test", methods=["POST"])
@requires(StaffRole.MARKETING)
def test_send(campaign_id: str) -> Any:
    """Send a copy of the campaign to chosen device ids only: a new campaign, sent now."""
    found = campaign_service.get(db.session, campaign_id)
    device_ids = _words(request.form.get("device_ids", ""))
    # The campaign's own fields, to these devices only, now (no schedule).
    skipped = {"name", "category", "audience", "send_at", "local_time"}
    body: dict[str, Any] = {
        name: getattr(found, name)
        for name in _CREATE.fields
        if name not in skipped and getattr(found, name, None) is not None
    }
    body.update(name=f"Test of {found.name}"[:200], audience={"device_ids": device_ids})
    try:
        data = _CREATE.load(body)
    except ma.ValidationError as invalid:
        errors = {"device_ids": _flat(invalid.messages)}
        return campaign(campaign_id, status=422, errors=errors)
    test = campaign_service.create(db.session, data, caller())
    campaign_service.send(
        db.session,
        test.id,
        caller(),
    )
    tasks.notify_queued(current_app, test.id)
    return redirect(url_for("console.campaign", campaign_id=test.id, done="test-queued"), 303)


@bp.route("/insights")
@requires(StaffRole.MARKETING)
def insights() -> Any:
    """Device insights as charts: platforms, versions, opt-in rates, recency."""
    found = insights_service.device_insights(db.session)
    db.session.rollback()
    return render_template("console/insights.html", insights=found, charts=_charts(found))


def _charts(found: dict[str, Any]) -> list[tuple[str, list[tuple[str, float]], float | None]]:
    """(title, [(label, value)], scale maximum) of each chart of the insights page."""

    def versions(rows: list[dict[str, Any]], field: str) -> list[tuple[str, float]]:
        return [(f"{row['platform']} {row[field] or 'unknown'}", row["devices"]) for row in rows]

    return [
        (
            "Active devices by platform",
            [(row["platform"], row["devices"]) for row in found["by_platform"]],
            None,
        ),
        ("By OS version", versions(found["by_os_version"], "os_version")[:20], None),
        ("By app version", versions(found["by_app_version"], "app_version")[:20], None),
        (
            "Opt-in rate (%)",
            [
                (purpose.replace("_", " "), round(100 * (value["rate"] or 0), 1))
                for purpose, value in found["opt_in"].items()
            ],
            100,
        ),
        (
            "Devices seen within N days",
            [(f"{days} days", n) for days, n in found["seen_within_days"].items()],
            None,
        ),
    ]
