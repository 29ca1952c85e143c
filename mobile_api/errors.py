"""One error shape for every failure, and the typed domain errors that map onto it."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

import flask_smorest
import marshmallow as ma
from apispec import BasePlugin
from sqlalchemy import exc as sa_exc
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


class DatabaseUnavailable(DomainError):
    code = 503
    error = "database_unavailable"
    description = "The database is not reachable."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


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


def _seconds_until_reset() -> int:
    """Whole seconds until the limit that was just exceeded lets the caller in again."""
    from mobile_api.extensions import limiter  # extensions imports this module

    current = limiter.current_limit
    if current is None:
        return 60
    return max(1, math.ceil(current.reset_at - time.time()))


class BodyRefusalsPlugin(BasePlugin):
    """Document, on every operation that takes a body, the refusals of any body."""

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Add 400 (not JSON) and 413 (over MAX_CONTENT_LENGTH) beside the schema's 422."""
        for operation in (operations or {}).values():
            if "requestBody" in operation:
                responses = operation.setdefault("responses", {})
                responses.setdefault("400", "BAD_REQUEST")
                responses.setdefault("413", "REQUEST_ENTITY_TOO_LARGE")


class Api(flask_smorest.Api):
    """flask-smorest's Api with the error body of API.md."""

    ERROR_SCHEMA = ErrorSchema

    def __init__(self, *args: Any, spec_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        spec_kwargs = dict(spec_kwargs or {})
        spec_kwargs["extra_plugins"] = [*spec_kwargs.get("extra_plugins", ()), BodyRefusalsPlugin()]
        super().__init__(*args, spec_kwargs=spec_kwargs, **kwargs)

    def init_app(self, app: Any, *args: Any, **kwargs: Any) -> None:
        """Also answer a lost or locked database with 503, not as a bug (500)."""
        super().init_app(app, *args, **kwargs)
        app.register_error_handler(sa_exc.OperationalError, self._database_unavailable)
        app.register_error_handler(sa_exc.InterfaceError, self._database_unavailable)

    def _database_unavailable(self, error: sa_exc.DBAPIError) -> Any:
        # A dropped connection has already been discarded by the pool, and a SQLite
        # lock outlived its busy timeout: either way, a retry may well succeed.
        log.warning("database unavailable: %s", type(error.orig).__name__)
        return self.handle_http_exception(DatabaseUnavailable())

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
            headers.setdefault("Retry-After", str(_seconds_until_reset()))
        return payload, code, headers


class AccountTerminated(DomainError):
    code = 403
    error = "account_terminated"
    description = "This account has been terminated; devices cannot be registered to it."


class LocationConsentRequired(DomainError):
    code = 403
    error = "location_consent_required"
    description = (
        "Places need the location_services preference on and the OS location permission "
        "precise or approximate on this device."
    )


class MappingProviderUnavailable(DomainError):
    code = 503
    error = "mapping_provider_unavailable"
    description = "The mapping provider is busy or unavailable; retry after the given delay."


class MappingProviderTimeout(DomainError):
    code = 504
    error = "mapping_provider_timeout"
    description = "The mapping provider did not answer in time."


class MappingProviderError(DomainError):
    code = 502
    error = "mapping_provider_error"
    description = "The mapping provider answered with an error."


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


class SignInRefused(DomainError):
    code = 401
    error = "sign_in_refused"
    description = "That email, password and code do not sign anybody in."


class StaffLinkInvalid(DomainError):
    code = 410
    error = "link_invalid"
    description = (
        "This sign-in link is used, expired or unknown; ask an administrator for a new one."
    )


class EnrolmentRefused(DomainError):
    code = 422
    error = "enrolment_refused"
    description = "The password or the authenticator code was not accepted."


class StaffExists(DomainError):
    code = 409
    error = "staff_exists"
    description = "A staff member with this email already exists."
