"""Liveness, readiness and metrics for the platform (no auth)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from flask import Response
from flask.views import MethodView
from sqlalchemy.exc import SQLAlchemyError

from mobile_api.errors import DatabaseUnavailable
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
    def get(self) -> Response:
        """Prometheus text exposition."""
        return metrics_response()
