"""Liveness, readiness and metrics for the platform (no auth; METRICS_TOKEN can guard /metrics)."""

from __future__ import annotations

import hmac
from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from flask import Response, current_app
from flask.views import MethodView
from sqlalchemy.exc import SQLAlchemyError

from mobile_api.auth import bearer_secret
from mobile_api.errors import DatabaseUnavailable, Unauthenticated
from mobile_api.extensions import db
from mobile_api.http_errors import ErrorSchema
from mobile_api.observability import metrics_response
from mobile_api.routes import Blueprint

blp = Blueprint("ops", __name__, description="Operations")


class HealthSchema(ma.Schema):
    """A health answer."""

    status = ma.fields.String(required=True)


@blp.route("/healthz")
class Health(MethodView):
    """Liveness."""

    @blp.response(200, HealthSchema)
    def get(self) -> Any:
        """The process is alive."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    """Readiness."""

    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=ErrorSchema, description="Database unreachable")
    def get(self) -> Any:
        """The database answers."""
        try:
            db.session.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:
            db.session.rollback()
            raise DatabaseUnavailable() from exc
        return {"status": "ready"}


@blp.route("/metrics")
class Metrics(MethodView):
    """Prometheus metrics."""

    @blp.response(200, content_type="text/plain")
    @blp.alt_response(
        401, schema=ErrorSchema, description="METRICS_TOKEN is set and was not presented"
    )
    def get(self) -> Response:
        """Prometheus text exposition (bearer METRICS_TOKEN when the deployment sets one)."""
        token = current_app.config.get("METRICS_TOKEN")
        if token and not hmac.compare_digest((bearer_secret() or "").encode(), token.encode()):
            raise Unauthenticated()
        return metrics_response()
