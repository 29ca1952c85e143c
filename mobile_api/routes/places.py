"""Places near me (device token): search nearby places and name the area around a point."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Flask, current_app
from flask.views import MethodView

from mobile_api.auth import DEVICE, auth_required, current_device
from mobile_api.extensions import device_limit_key, limiter
from mobile_api.http_errors import ErrorSchema
from mobile_api.routes import Blueprint
from mobile_api.routes.fields import printable
from mobile_api.services import places as places_service

blp = Blueprint(
    "places",
    __name__,
    url_prefix="/v1/places",
    description=(
        "Places near me. Needs the location_services preference on and the OS location "
        "permission precise or approximate (else 403 location_consent_required). Only the "
        "position rounded to LOCATION_PRECISION_DECIMALS and the category or query reach the "
        "mapping provider; positions are never stored or logged."
    ),
)


def _places_limit() -> str:
    return str(current_app.config["RATELIMIT_PLACES"])


class Coordinate(ma.fields.Float):
    """A JSON number only (no strings, booleans, NaN or infinity), within ±bound degrees."""

    def __init__(self, bound: float, **kwargs: Any) -> None:
        super().__init__(
            allow_nan=False,
            validate=ma.validate.Range(min=-bound, max=bound),
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        try:
            number = float(value)
        except OverflowError:  # a JSON integer too large for a float
            raise self.make_error("too_large") from None
        return super()._deserialize(number, attr, data, **kwargs)


class PointSchema(ma.Schema):
    """A position on Earth (WGS 84 degrees), given in the body only, never in a URL."""

    lat = Coordinate(90, required=True, metadata={"description": "Latitude, -90 to 90"})
    lon = Coordinate(180, required=True, metadata={"description": "Longitude, -180 to 180"})


class PlaceSearchSchema(PointSchema):
    """Body of POST /v1/places/search: a category or a free-text query, not both."""

    category = ma.fields.String(
        validate=ma.validate.OneOf(sorted(places_service.CATEGORIES)),
        metadata={"description": "One of: " + ", ".join(sorted(places_service.CATEGORIES))},
    )
    query = ma.fields.String(
        validate=printable(100),
        metadata={"description": "Free text instead of a category, e.g. 'vegan bakery'"},
    )
    limit = ma.fields.Integer(
        strict=True,
        load_default=20,
        validate=ma.validate.Range(min=1, max=places_service.MAX_LIMIT),
        metadata={"description": f"1–{places_service.MAX_LIMIT}, default 20"},
    )

    @ma.validates_schema
    def _one_term(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("category" in data) == ("query" in data):
            raise ma.ValidationError(
                "Give exactly one of category or query.", field_name="category"
            )
        if "query" in data and not data["query"].strip():
            raise ma.ValidationError("Must not be blank.", field_name="query")


class PlaceSchema(ma.Schema):
    """A place near the user."""

    name = ma.fields.String(required=True)
    category = ma.fields.String(required=True)
    lat = ma.fields.Float(required=True)
    lon = ma.fields.Float(required=True)
    distance_m = ma.fields.Integer(
        required=True, metadata={"description": "Metres from the given (exact) point"}
    )
    address = ma.fields.String(required=True)


class PlaceSearchResultSchema(ma.Schema):
    """Places nearest first, with the provider's attribution to show beside them."""

    places = ma.fields.List(ma.fields.Nested(PlaceSchema), required=True)
    attribution = ma.fields.String(required=True)


class AreaSchema(ma.Schema):
    """The coarse area around a point: never a street or house number."""

    city = ma.fields.String(required=True, allow_none=True)
    district = ma.fields.String(required=True, allow_none=True)
    region = ma.fields.String(required=True, allow_none=True)
    country = ma.fields.String(required=True, allow_none=True)
    country_code = ma.fields.String(
        required=True, allow_none=True, metadata={"description": "ISO 3166-1 alpha-2"}
    )


class ReverseResultSchema(ma.Schema):
    """Response of POST /v1/places/reverse."""

    area = ma.fields.Nested(AreaSchema, required=True)


def _provider_faults(func: Any) -> Any:
    """Document the provider faults and the rate limit."""
    wrapper = func
    for code, description in (
        (429, "Rate limited"),
        (502, "mapping_provider_error"),
        (503, "mapping_provider_unavailable (with Retry-After)"),
        (504, "mapping_provider_timeout"),
    ):
        wrapper = blp.alt_response(code, schema=ErrorSchema, description=description)(wrapper)
    return wrapper


def init_app(app: Flask) -> None:
    """Create the app's places gateway."""
    places_service.init_app(app)


@blp.route("/search")
class PlacesSearch(MethodView):
    """Places near a point."""

    decorators = [limiter.limit(_places_limit, key_func=device_limit_key)]

    @auth_required(blp, DEVICE)
    @blp.arguments(PlaceSearchSchema)
    @blp.response(200, PlaceSearchResultSchema)
    @_provider_faults
    def post(self, data: dict[str, Any]) -> Any:
        """Places matching a category or query near the given point, nearest first."""
        return places_service.search(
            places_service.current_gateway(),
            current_device(),
            data["lat"],
            data["lon"],
            category=data.get("category"),
            query=data.get("query"),
            limit=data["limit"],
        )


@blp.route("/reverse")
class PlacesReverse(MethodView):
    """The area around a point."""

    decorators = [limiter.limit(_places_limit, key_func=device_limit_key)]

    @auth_required(blp, DEVICE)
    @blp.arguments(PointSchema)
    @blp.response(200, ReverseResultSchema)
    @_provider_faults
    def post(self, data: dict[str, Any]) -> Any:
        """The city, district, region and country around the given point."""
        area = places_service.reverse(
            places_service.current_gateway(), current_device(), data["lat"], data["lon"]
        )
        return {"area": area}
