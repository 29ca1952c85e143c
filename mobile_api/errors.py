"""One error shape for every failure, and the typed domain errors that map onto it."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import flask_smorest
import marshmallow as ma
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)


class ErrorSchema(ma.Schema):
    """The body of every error response."""

    code = ma.fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = ma.fields.String(required=True, metadata={"description": "HTTP status name"})
    message = ma.fields.String(required=True, metadata={"description": "What went wrong"})
    errors = ma.fields.Dict(
        metadata={"description": "Validation errors by location (json, query, headers), then field"}
    )
    error = ma.fields.String(
        metadata={"description": "Stable snake_case identifier of a domain refusal"}
    )


class DomainError(HTTPException):
    """A refusal with a stable identifier; subclasses set code, error and description."""

    code: int | None = 400
    error: ClassVar[str] = "bad_request"
    description: str | None = "The request was refused."

    def __init__(
        self,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description=message or self.description)
        self.extra_headers = headers or {}


class Unauthenticated(DomainError):
    code = 401
    error = "unauthenticated"
    description = "A valid bearer credential is required."


class Forbidden(DomainError):
    code = 403
    error = "forbidden"
    description = "This credential may not call this endpoint."


class NotFound(DomainError):
    code = 404
    error = "not_found"
    description = "No such resource."


class InstallationExists(DomainError):
    code = 409
    error = "installation_exists"
    description = (
        "This installation is already registered; "
        "send its device token in X-Device-Token to update it."
    )


class InvalidCursor(DomainError):
    code = 422
    error = "invalid_cursor"
    description = "The pagination cursor is not valid."


_DEFAULT_MESSAGES = {
    400: "The request could not be understood.",
    401: Unauthenticated.description,
    403: Forbidden.description,
    404: "No such resource.",
    405: "This method is not allowed on this resource.",
    413: "The request body is too large.",
    415: "Send the body as application/json.",
    422: "The request was well-formed but contains invalid values.",
    429: "Too many requests; slow down and retry later.",
    500: "Something went wrong on our side; it has been logged.",
}


class Api(flask_smorest.Api):
    """flask-smorest's Api with the error body of API.md."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Turn any HTTPException (and unhandled errors) into the one error shape."""
        code = error.code or 500
        if isinstance(error, InternalServerError) and error.original_exception is not None:
            log.error(
                "unhandled error: %s",
                type(error.original_exception).__name__,
                exc_info=error.original_exception,
            )
        payload: dict[str, Any] = {
            "code": code,
            "status": error.name,
            "message": _DEFAULT_MESSAGES.get(code, error.description or error.name),
        }
        headers: dict[str, str] = {}
        if isinstance(error, DomainError):
            payload["error"] = error.error
            payload["message"] = error.description or payload["message"]
            headers.update(error.extra_headers)
        data = getattr(error, "data", None)
        if data:
            if "message" in data:
                payload["message"] = data["message"]
            errors = data.get("errors", data.get("messages"))
            if errors:
                payload["errors"] = errors
                if code == 422 and "message" not in data:
                    payload["message"] = _DEFAULT_MESSAGES[422]
            if "error" in data:
                payload["error"] = data["error"]
            headers.update(data.get("headers") or {})
        # Keep protocol headers such as Allow (405) and Retry-After (429, 503),
        # but not the HTML content type werkzeug would send.
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                headers.setdefault(name, value)
        if code == 429:
            payload["error"] = "rate_limited"
            payload["message"] = _DEFAULT_MESSAGES[429]
        return payload, code, headers


class ServiceCampaignRequiresAdmin(DomainError):
    code = 403
    error = "service_campaign_requires_admin"
    description = "Service campaigns can only be created, sent or cancelled with an admin key."


class CampaignAlreadySent(DomainError):
    code = 409
    error = "campaign_already_sent"
    description = "This campaign has already been sent (or cancelled); nothing was sent again."


class CampaignFinished(DomainError):
    code = 409
    error = "campaign_finished"
    description = "This campaign has already finished; there is nothing left to cancel."
