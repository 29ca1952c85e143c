"""Push campaigns (marketing; service campaigns need admin)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app
from flask.views import MethodView

from mobile_api import tasks
from mobile_api.auth import auth_required, current_caller
from mobile_api.extensions import db
from mobile_api.http_errors import ErrorSchema
from mobile_api.pagination import PageArgsSchema, page_schema, paginate
from mobile_api.routes import Blueprint
from mobile_api.routes.fields import (
    CLOCK,
    VERSION,
    Locale,
    Timestamp,
    printable,
    validate_time_zone,
)
from mobile_api.routes.message_fields import (
    CATEGORY_KEY,
    DEVICE_ID,
    TextSchema,
    https_url,
    validate_data,
)
from mobile_api.services import campaigns as campaign_service
from mobile_api.services.dispatch import Settings
from models import (
    Campaign,
    CampaignCategory,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    Platform,
    Role,
)

blp = Blueprint("campaigns", __name__, url_prefix="/v1/campaigns", description="Push campaigns")

_MIN_VERSION = ma.validate.Regexp(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,4}$", error="e.g. 10.0 or 17.4.1")
_MAX_LIST = 1000


def _list(
    field: ma.fields.Field[Any], max_items: int = _MAX_LIST, **kwargs: Any
) -> ma.fields.List[Any]:
    return ma.fields.List(field, validate=ma.validate.Length(min=1, max=max_items), **kwargs)


class AudienceSchema(ma.Schema):
    """Which devices a campaign targets; every filter set must match (none set: all)."""

    platforms = _list(ma.fields.String(validate=ma.validate.OneOf([p.value for p in Platform])))
    app_versions = _list(ma.fields.String(validate=VERSION))
    min_os_version = ma.fields.String(
        validate=_MIN_VERSION,
        metadata={"description": "Compared as a version: 10.0 > 9.3"},
    )
    locales = _list(
        Locale(), metadata={"description": "BCP 47 tags; a bare language also matches regions"}
    )
    account_ids = _list(ma.fields.String(validate=printable(128)))
    device_ids = _list(ma.fields.String(validate=DEVICE_ID), max_items=500)
    last_seen_within_days = ma.fields.Integer(
        strict=True, validate=ma.validate.Range(min=1, max=3650)
    )


class CampaignFieldsSchema(ma.Schema):
    """The fields of a campaign a marketer writes (all optional here)."""

    name = ma.fields.String(validate=printable(200))
    category = ma.fields.String(validate=ma.validate.OneOf([c.value for c in CampaignCategory]))
    category_key = ma.fields.String(
        validate=CATEGORY_KEY,
        metadata={"description": "A promotional or service category; its kind is `category`"},
    )
    title = ma.fields.String(validate=printable(200))
    body = ma.fields.String(validate=ma.validate.Length(min=1, max=2000))
    data = ma.fields.Dict(
        keys=ma.fields.String(validate=printable(64)),
        values=ma.fields.String(validate=ma.validate.Length(max=1024)),
        validate=validate_data,
    )
    audience = ma.fields.Nested(AudienceSchema)
    # strict: a JSON number with a fraction (2.5e-42) is refused, not truncated to 0.
    ttl_seconds = ma.fields.Integer(
        strict=True,
        allow_none=True,
        validate=ma.validate.Range(min=0, max=28 * 24 * 3600),
        metadata={"description": "Default 86400 for promotional campaigns"},
    )
    collapse_key = ma.fields.String(allow_none=True, validate=printable(64))
    priority = ma.fields.String(validate=ma.validate.OneOf(["normal", "high"]))
    content = ma.fields.Dict(
        keys=Locale(),
        values=ma.fields.Nested(TextSchema),
        validate=ma.validate.Length(max=100),
        metadata={
            "description": "BCP 47 tag → {title, body}; title/body are the fallback ({}: none)"
        },
    )
    default_locale = Locale(allow_none=True, metadata={"description": "The fallback's language"})
    image_url = ma.fields.String(
        allow_none=True, validate=[ma.validate.Length(max=2048), https_url]
    )
    link = ma.fields.String(
        allow_none=True,
        validate=printable(2048),
        metadata={"description": "A deep link the app opens; also sent as data.link"},
    )
    sound = ma.fields.String(allow_none=True, validate=printable(64))
    badge = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=0, max=99999))
    send_at = ma.fields.AwareDateTime(
        allow_none=True, metadata={"description": "RFC 3339; not before this moment"}
    )
    local_time = ma.fields.String(
        allow_none=True,
        validate=CLOCK,
        metadata={"description": "HH:MM in each device's timezone, first on or after send_at"},
    )
    fallback_timezone = ma.fields.String(
        validate=validate_time_zone,
        metadata={"description": "For devices without a timezone (default UTC)"},
    )


class CampaignCreateSchema(CampaignFieldsSchema):
    """Body of POST /v1/campaigns."""

    name = ma.fields.String(required=True, validate=printable(200))
    title = ma.fields.String(required=True, validate=printable(200))
    body = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=2000))

    @ma.validates_schema
    def _category_given(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if "category" not in data and "category_key" not in data:
            raise ma.ValidationError("Give category or category_key.", "category")


class CampaignUpdateSchema(CampaignFieldsSchema):
    """Body of PATCH /v1/campaigns/{id}: any field of a campaign."""


class CampaignListArgsSchema(PageArgsSchema):
    """Query of the campaign list."""

    status = ma.fields.String(validate=ma.validate.OneOf([s.value for s in CampaignStatus]))


class CountsSchema(ma.Schema):
    """Where the targeted devices stand."""

    targeted = ma.fields.Integer(required=True)
    sent = ma.fields.Integer(required=True)
    failed = ma.fields.Integer(required=True)
    suppressed = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer())
    pending = ma.fields.Integer(required=True)
    invalid_tokens_pruned = ma.fields.Integer(required=True)


class CampaignSchema(ma.Schema):
    """A campaign and its counts."""

    id = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    category = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    body = ma.fields.String(required=True)
    data = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    audience = ma.fields.Nested(AudienceSchema)
    ttl_seconds = ma.fields.Integer(allow_none=True)
    collapse_key = ma.fields.String(allow_none=True)
    priority = ma.fields.String(required=True)
    category_key = ma.fields.String(required=True)
    content = ma.fields.Function(
        lambda campaign: campaign.content or {},
        metadata={"type": "object", "description": "BCP 47 tag → {title, body}"},
    )
    default_locale = ma.fields.String(allow_none=True)
    image_url = ma.fields.String(allow_none=True)
    link = ma.fields.String(allow_none=True)
    sound = ma.fields.String(allow_none=True)
    badge = ma.fields.Integer(allow_none=True)
    send_at = Timestamp(allow_none=True)
    local_time = ma.fields.String(allow_none=True)
    fallback_timezone = ma.fields.String(required=True)
    status = ma.fields.String(required=True)
    created_at = Timestamp(required=True)
    queued_at = Timestamp(allow_none=True)
    started_at = Timestamp(allow_none=True)
    finished_at = Timestamp(allow_none=True)
    counts = ma.fields.Nested(CountsSchema, required=True)


class ExcludedSchema(ma.Schema):
    """Devices matching the filters that would not get it, by reason."""

    disabled = ma.fields.Integer(required=True)
    account_terminated = ma.fields.Integer(required=True)
    no_push_token = ma.fields.Integer(required=True)
    invalid_push_token = ma.fields.Integer(required=True)
    push_permission_denied = ma.fields.Integer(required=True)
    promotional_opt_out = ma.fields.Integer(
        required=True, metadata={"description": "Always 0 for service campaigns"}
    )
    category_opt_out = ma.fields.Integer(
        required=True, metadata={"description": "Opted out of this (non-promotions) category"}
    )
    frequency_capped = ma.fields.Integer(
        required=True, metadata={"description": "At PROMO_FREQUENCY_CAP as of now"}
    )


class PreviewSchema(ma.Schema):
    """What sending now would reach."""

    eligible = ma.fields.Integer(required=True)
    excluded = ma.fields.Nested(ExcludedSchema, required=True)
    languages = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Integer(),
        required=True,
        metadata={
            "description": "Eligible devices by the content key they get (fallback: default_locale)"
        },
    )


class DeliveryArgsSchema(PageArgsSchema):
    """Query of the deliveries list."""

    status = ma.fields.String(
        validate=ma.validate.OneOf(
            [DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SUPPRESSED, "pending"]
        ),
        metadata={"description": "pending also lists deliveries being handed over now"},
    )


class DeliverySchema(ma.Schema):
    """One device's fate in a campaign."""

    device_id = ma.fields.String(
        allow_none=True, metadata={"description": "null once the device has been erased"}
    )
    status = ma.fields.String(required=True)
    reason = ma.fields.String(allow_none=True)
    attempts = ma.fields.Integer(required=True)
    updated_at = Timestamp(required=True)


DeliveryPageSchema = page_schema(DeliverySchema, "DeliveryPage")


class ExplainSchema(ma.Schema):
    """Why a device did or did not get a campaign."""

    device_id = ma.fields.String(required=True)
    campaign_id = ma.fields.String(required=True)
    campaign_status = ma.fields.String(required=True)
    targeted = ma.fields.Boolean(required=True)
    status = ma.fields.String(allow_none=True)
    delivery = ma.fields.Nested(DeliverySchema, allow_none=True)
    matches_audience_now = ma.fields.Boolean(required=True)
    unmatched_filters = ma.fields.List(ma.fields.String(), required=True)
    deliverable_now = ma.fields.Boolean(required=True)
    exclusion_now = ma.fields.String(allow_none=True)
    explanation = ma.fields.String(required=True)


CampaignPageSchema = page_schema(CampaignSchema, "CampaignPage")


def _caps() -> Any:
    return Settings.from_config(current_app.config).caps


def _with_counts(campaign: Any) -> Any:
    campaign.counts = campaign_service.counts(db.session, campaign)
    return campaign


@blp.route("")
class Campaigns(MethodView):
    """Create and list campaigns."""

    @auth_required(blp, Role.MARKETING)
    @blp.arguments(CampaignListArgsSchema, location="query")
    @blp.response(200, CampaignPageSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Campaigns, newest first, with their counts."""
        items, next_cursor = paginate(
            db.session,
            campaign_service.list_query(args.get("status")),
            Campaign.id,
            args["limit"],
            args["cursor"],
            descending=True,
        )
        return {"items": [_with_counts(c) for c in items], "next_cursor": next_cursor}

    @auth_required(blp, Role.MARKETING)
    @blp.arguments(CampaignCreateSchema)
    @blp.response(201, CampaignSchema)
    @blp.alt_response(403, schema=ErrorSchema, description="service_campaign_requires_admin")
    def post(self, data: dict[str, Any]) -> Any:
        """Create a campaign in status draft."""
        campaign = campaign_service.create(
            db.session,
            data,
            current_caller(),
        )
        return _with_counts(campaign)


@blp.route("/<string:campaign_id>")
class CampaignItem(MethodView):
    """One campaign."""

    @auth_required(blp, Role.MARKETING)
    @blp.response(200, CampaignSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such campaign")
    def get(self, campaign_id: str) -> Any:
        """Status and counts."""
        return _with_counts(campaign_service.get(db.session, campaign_id))

    @auth_required(blp, Role.MARKETING)
    @blp.arguments(CampaignUpdateSchema)
    @blp.response(200, CampaignSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such campaign")
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="campaign_already_sent, or campaign_already_scheduled (audience, category)",
    )
    def patch(self, data: dict[str, Any], campaign_id: str) -> Any:
        """Edit a draft or scheduled campaign."""
        return _with_counts(
            campaign_service.update(db.session, campaign_id, data, current_caller())
        )


@blp.route("/<string:campaign_id>/preview")
class CampaignPreview(MethodView):
    """Preview the audience."""

    @auth_required(blp, Role.MARKETING)
    @blp.response(200, PreviewSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such campaign")
    def post(self, campaign_id: str) -> Any:
        """Count eligible devices and exclusions by reason, as of now; nothing is sent."""
        campaign = campaign_service.get(db.session, campaign_id)
        return campaign_service.preview(db.session, campaign, _caps())


@blp.route("/<string:campaign_id>/send")
class CampaignSend(MethodView):
    """Send a campaign."""

    @auth_required(blp, Role.MARKETING)
    @blp.response(202, CampaignSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such campaign")
    @blp.alt_response(409, schema=ErrorSchema, description="campaign_already_sent")
    def post(self, campaign_id: str) -> Any:
        """Queue the campaign for the dispatcher (once)."""
        campaign = campaign_service.send(
            db.session,
            campaign_id,
            current_caller(),
        )
        # After the commit that queued it, never before.
        tasks.notify_queued(current_app, campaign.id)
        return _with_counts(campaign)


@blp.route("/<string:campaign_id>/cancel")
class CampaignCancel(MethodView):
    """Cancel a campaign."""

    @auth_required(blp, Role.MARKETING)
    @blp.response(200, CampaignSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such campaign")
    @blp.alt_response(409, schema=ErrorSchema, description="campaign_finished")
    def post(self, campaign_id: str) -> Any:
        """Stop everything not yet handed to FCM."""
        campaign = campaign_service.cancel(
            db.session,
            campaign_id,
            current_caller(),
        )
        return _with_counts(campaign)


@blp.route("/<string:campaign_id>/deliveries")
class CampaignDeliveries(MethodView):
    """Per-device deliveries."""

    @auth_required(blp, Role.MARKETING)
    @blp.arguments(DeliveryArgsSchema, location="query")
    @blp.response(200, DeliveryPageSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such campaign")
    def get(self, args: dict[str, Any], campaign_id: str) -> Any:
        """Per-device rows with their reason, in targeting order."""
        campaign_service.get(db.session, campaign_id)
        items, next_cursor = paginate(
            db.session,
            campaign_service.deliveries_query(campaign_id, args.get("status")),
            Delivery.id,
            args["limit"],
            args["cursor"],
            within=Delivery.campaign_id,
        )
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/<string:campaign_id>/explain/<string:device_id>")
class CampaignExplain(MethodView):
    """Explain one device."""

    @auth_required(blp, Role.MARKETING)
    @blp.response(200, ExplainSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such campaign or device")
    def get(self, campaign_id: str, device_id: str) -> Any:
        """Why this device did or did not get the campaign."""
        campaign = campaign_service.get(db.session, campaign_id)
        return campaign_service.explain(db.session, campaign, device_id, _caps())
