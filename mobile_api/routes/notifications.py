"""Transactional notifications (the helpdesk backend's role `notify`; service categories: admin)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app, request
from flask.views import MethodView

from mobile_api import tasks
from mobile_api.auth import auth_required, current_caller, current_principal
from mobile_api.extensions import db
from mobile_api.http_errors import ErrorSchema
from mobile_api.routes import Blueprint
from mobile_api.routes.fields import Locale, Timestamp, printable
from mobile_api.routes.message_fields import (
    CATEGORY_KEY,
    DEVICE_ID,
    TextSchema,
    https_url,
    validate_data,
)
from mobile_api.services import notifications as notification_service
from models import Role

blp = Blueprint(
    "notifications",
    __name__,
    url_prefix="/v1/notifications",
    description="Transactional notifications to one account's devices",
)

# Visible ASCII: the key travels in a header and is compared byte for byte.
_IDEMPOTENCY_KEY = ma.validate.Regexp(r"^[\x21-\x7e]{1,255}$", error="1–255 visible ASCII chars.")


class IdempotencyHeaderSchema(ma.Schema):
    """The optional Idempotency-Key header."""

    class Meta:
        unknown = ma.EXCLUDE

    idempotency_key = ma.fields.String(
        data_key="Idempotency-Key",
        validate=_IDEMPOTENCY_KEY,
        metadata={
            "description": "Same key and equal body within 24 h: the same notification, "
            "nothing sent again; another body: 422 idempotency_key_reused"
        },
    )


class NotificationCreateSchema(ma.Schema):
    """Body of POST /v1/notifications: exactly one of account_id and device_ids."""

    category_key = ma.fields.String(required=True, validate=CATEGORY_KEY)
    account_id = ma.fields.String(validate=printable(128))
    device_ids = ma.fields.List(
        ma.fields.String(validate=DEVICE_ID), validate=ma.validate.Length(min=1, max=500)
    )
    title = ma.fields.String(required=True, validate=printable(200))
    body = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=2000))
    content = ma.fields.Dict(
        keys=Locale(),
        values=ma.fields.Nested(TextSchema),
        validate=ma.validate.Length(max=50),
        metadata={"description": "Per-locale text; title and body are the fallback"},
    )
    default_locale = Locale(metadata={"description": "The language of the fallback text"})
    data = ma.fields.Dict(
        keys=ma.fields.String(validate=printable(64)),
        values=ma.fields.String(validate=ma.validate.Length(max=1024)),
        validate=validate_data,
    )
    link = ma.fields.String(
        validate=printable(2048), metadata={"description": "A deep link; also sent as data.link"}
    )
    image_url = ma.fields.String(validate=[ma.validate.Length(max=2048), https_url])
    ttl_seconds = ma.fields.Integer(validate=ma.validate.Range(min=0, max=28 * 24 * 3600))
    collapse_key = ma.fields.String(validate=printable(64))

    @ma.validates_schema
    def _one_target(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if ("account_id" in data) == ("device_ids" in data):
            raise ma.ValidationError("Give exactly one of account_id and device_ids.", "account_id")


class AcceptedSchema(ma.Schema):
    """What POST /v1/notifications answers."""

    id = ma.fields.String(required=True)
    status = ma.fields.String(required=True)
    devices = ma.fields.Integer(required=True, metadata={"description": "Devices targeted"})


class NotificationCountsSchema(ma.Schema):
    """Where the targeted devices stand."""

    sent = ma.fields.Integer(required=True)
    failed = ma.fields.Integer(required=True)
    suppressed = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer())
    pending = ma.fields.Integer(required=True)
    invalid_tokens_pruned = ma.fields.Integer(required=True)


class OutcomeSchema(ma.Schema):
    """One device's outcome."""

    device_id = ma.fields.String(
        allow_none=True, metadata={"description": "null once the device has been erased"}
    )
    status = ma.fields.String(
        required=True, metadata={"description": "pending, sending, sent, failed or suppressed"}
    )
    reason = ma.fields.String(allow_none=True)
    attempts = ma.fields.Integer(required=True)
    updated_at = Timestamp(required=True)


class NotificationSchema(AcceptedSchema):
    """A notification, its status and every device's outcome."""

    category_key = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    body = ma.fields.String(required=True)
    content = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Nested(TextSchema))
    default_locale = ma.fields.String(allow_none=True)
    data = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    link = ma.fields.String(allow_none=True)
    image_url = ma.fields.String(allow_none=True)
    ttl_seconds = ma.fields.Integer(allow_none=True)
    collapse_key = ma.fields.String(allow_none=True)
    account_id = ma.fields.String(allow_none=True)
    device_ids = ma.fields.List(ma.fields.String(), allow_none=True)
    created_at = Timestamp(required=True)
    counts = ma.fields.Nested(NotificationCountsSchema, required=True)
    deliveries = ma.fields.List(ma.fields.Nested(OutcomeSchema), required=True)


def _idempotency(key: str | None) -> notification_service.Idempotency | None:
    api_key = current_principal().key
    if key is None or api_key is None:
        return None
    # The body as parsed JSON, not as loaded: equal JSON is the same request.
    body = request.get_json(silent=True)
    return notification_service.Idempotency(api_key.id, key, notification_service.fingerprint(body))


@blp.route("")
class Notifications(MethodView):
    """Send notifications."""

    @auth_required(blp, Role.NOTIFY)
    @blp.arguments(IdempotencyHeaderSchema, location="headers")
    @blp.arguments(NotificationCreateSchema)
    @blp.response(202, AcceptedSchema)
    @blp.alt_response(403, schema=ErrorSchema, description="service_notification_requires_admin")
    @blp.alt_response(409, schema=ErrorSchema, description="request_in_progress (see Retry-After)")
    def post(self, headers: dict[str, Any], data: dict[str, Any]) -> Any:
        """Accept a notification for the account's devices (or the devices named)."""
        accepted = notification_service.accept(
            db.session,
            data,
            current_caller(),
            idempotency=_idempotency(headers.get("idempotency_key")),
            wait_seconds=float(current_app.config["NOTIFY_IDEMPOTENCY_WAIT_SECONDS"]),
        )
        if accepted.created:
            # After the commit that accepted it, never before.
            tasks.notification_accepted(current_app, accepted.id)
        return accepted


@blp.route("/<string:notification_id>")
class NotificationItem(MethodView):
    """One notification."""

    @auth_required(blp, Role.NOTIFY)
    @blp.response(200, NotificationSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such notification")
    def get(self, notification_id: str) -> Any:
        """Status and every device's outcome."""
        notification = notification_service.get(db.session, notification_id, current_caller())
        rows = notification_service.outcomes(db.session, notification.id)
        return {
            **{
                name: getattr(notification, name)
                for name in NotificationSchema._declared_fields
                if hasattr(notification, name)
            },
            "status": notification_service.status_of(rows),
            "devices": len(rows),
            "counts": notification_service.counts(rows),
            "deliveries": rows,
        }
