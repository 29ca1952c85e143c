"""The data inventory (any API key role): what is stored about people, why, and for how long."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView

from mobile_api.auth import auth_required
from mobile_api.routes import Blueprint
from mobile_api.services import inventory
from models import Role
from models.inventory import Basis, Erasure, Purpose, Subject

blp = Blueprint(
    "privacy_inventory",
    __name__,
    url_prefix="/v1/privacy",
    description="The data inventory: every stored field that can hold personal data.",
)


def _one_of(values: Any) -> ma.validate.OneOf:
    return ma.validate.OneOf([v.value for v in values])


class PersonalFieldSchema(ma.Schema):
    """A stored field that can hold personal data."""

    table = ma.fields.String(required=True)
    column = ma.fields.String(required=True)
    subject = ma.fields.String(
        required=True, validate=_one_of(Subject), metadata={"enum": [s.value for s in Subject]}
    )
    purpose = ma.fields.String(
        required=True,
        validate=_one_of(Purpose),
        metadata={"enum": [p.value for p in Purpose], "description": "One of the policy's"},
    )
    legal_basis = ma.fields.String(
        required=True, validate=_one_of(Basis), metadata={"enum": [b.value for b in Basis]}
    )
    retention = ma.fields.String(required=True)
    exported = ma.fields.Boolean(required=True)
    export_path = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Where it appears in a device export, e.g. consents[].purpose"},
    )
    why_not_exported = ma.fields.String(required=True, allow_none=True)
    erasure = ma.fields.String(
        required=True, validate=_one_of(Erasure), metadata={"enum": [e.value for e in Erasure]}
    )


class NotPersonalSchema(ma.Schema):
    """A stored column declared to hold no personal data, and why."""

    table = ma.fields.String(required=True)
    column = ma.fields.String(required=True)
    why = ma.fields.String(required=True)


class InventorySchema(ma.Schema):
    """The whole inventory: every column of the schema is in one of the two lists."""

    personal = ma.fields.List(ma.fields.Nested(PersonalFieldSchema), required=True)
    not_personal = ma.fields.List(ma.fields.Nested(NotPersonalSchema), required=True)


@blp.route("/inventory")
class Inventory(MethodView):
    """The data inventory."""

    @auth_required(blp, *(role.value for role in Role))
    @blp.response(200, InventorySchema)
    def get(self) -> Any:
        """Every stored field that can hold personal data, and why, for how long, how erased."""
        return inventory.document()
