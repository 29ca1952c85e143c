"""Notification categories: anyone authenticated reads them, admins define them."""

from __future__ import annotations

import re
from typing import Any

import flask_smorest
import marshmallow as ma
from flask.views import MethodView

from mobile_api.auth import DEVICE, auth_required, current_caller
from mobile_api.extensions import db
from mobile_api.http_errors import ErrorSchema
from mobile_api.routes import Blueprint
from mobile_api.routes.fields import printable
from mobile_api.services import categories as category_service
from models import CategoryKind, InterruptionLevel, Role

blp = Blueprint("categories", __name__, url_prefix="/v1", description="Notification categories")

_KEY = re.compile(category_service.KEY_PATTERN)
_CHANNEL_ID = ma.validate.Regexp(
    r"^[A-Za-z0-9._-]{1,100}$", error="1–100 characters of A-Z a-z 0-9 . _ -"
)


class CategorySchema(ma.Schema):
    """A notification category."""

    key = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    kind = ma.fields.String(required=True)
    default_enabled = ma.fields.Boolean(required=True)
    user_can_opt_out = ma.fields.Boolean(required=True)
    android_channel_id = ma.fields.String(required=True)
    ios_interruption_level = ma.fields.String(required=True)


class CategoryListSchema(ma.Schema):
    """Every category."""

    items = ma.fields.List(ma.fields.Nested(CategorySchema), required=True)


class CategoryPutSchema(ma.Schema):
    """Body of PUT /v1/admin/categories/{key}."""

    name = ma.fields.String(required=True, validate=printable(100))
    kind = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf([k.value for k in CategoryKind]),
        metadata={"description": "Fixed once created"},
    )
    default_enabled = ma.fields.Boolean(
        metadata={"description": "Transactional: on until the user turns it off (default false)"}
    )
    user_can_opt_out = ma.fields.Boolean(
        metadata={"description": "Default: true, except for service categories"}
    )
    android_channel_id = ma.fields.String(required=True, validate=_CHANNEL_ID)
    ios_interruption_level = ma.fields.String(
        required=True, validate=ma.validate.OneOf([level.value for level in InterruptionLevel])
    )


@blp.route("/categories")
class Categories(MethodView):
    """The category catalogue."""

    @auth_required(blp, DEVICE, *(role.value for role in Role))
    @blp.response(200, CategoryListSchema)
    def get(self) -> Any:
        """Every notification category, by key."""
        return {"items": category_service.list_all(db.session)}


@blp.route("/admin/categories/<string:key>")
class CategoryItem(MethodView):
    """One category."""

    @auth_required(blp, Role.ADMIN)
    @blp.arguments(CategoryPutSchema)
    @blp.response(200, CategorySchema)
    @blp.alt_response(201, schema=CategorySchema, description="Created")
    @blp.alt_response(
        422,
        schema=ErrorSchema,
        description="category_kind_immutable, category_settings_invalid, or a bad key",
    )
    def put(self, data: dict[str, Any], key: str) -> Any:
        """Create or update a category; its kind is fixed once created."""
        if not _KEY.match(key):
            flask_smorest.abort(
                422, errors={"path": {"key": ["[a-z][a-z0-9_]{1,39}, e.g. order_updates."]}}
            )
        category, created = category_service.put(db.session, key, data, current_caller())
        return category, (201 if created else 200)
