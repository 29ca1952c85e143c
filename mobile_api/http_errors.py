"""The web layer's errors: one body shape for every failure, and the one table that maps
each domain refusal (mobile_api/errors.py) to its HTTP status and `error` identifier."""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import flask_smorest
import marshmallow as ma
from apispec import BasePlugin
from flask import request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from mobile_api import errors, openapi

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


# Every domain refusal: (HTTP status, `error` identifier, default message).
DOMAIN_ERRORS: dict[type[errors.DomainError], tuple[int, str, str]] = {
    errors.DomainError: (400, "bad_request", "The request was refused."),
    errors.Unauthenticated: (401, "unauthenticated", "A valid bearer credential is required."),
    errors.Forbidden: (403, "forbidden", "This credential may not call this endpoint."),
    errors.NotFound: (404, "not_found", "No such resource."),
    errors.InstallationExists: (
        409,
        "installation_exists",
        "This installation is already registered; "
        "send its device token in X-Device-Token to update it.",
    ),
    errors.DatabaseUnavailable: (
        503,
        "database_unavailable",
        "The database is not reachable.",
    ),
    errors.InvalidCursor: (422, "invalid_cursor", "The pagination cursor is not valid."),
    errors.AccountTerminated: (
        403,
        "account_terminated",
        "This account has been terminated; devices cannot be registered to it.",
    ),
    errors.LocationConsentRequired: (
        403,
        "location_consent_required",
        "Places need the location_services preference on and the OS location permission "
        "precise or approximate on this device.",
    ),
    errors.MappingProviderUnavailable: (
        503,
        "mapping_provider_unavailable",
        "The mapping provider is busy or unavailable; retry after the given delay.",
    ),
    errors.MappingProviderTimeout: (
        504,
        "mapping_provider_timeout",
        "The mapping provider did not answer in time.",
    ),
    errors.MappingProviderError: (
        502,
        "mapping_provider_error",
        "The mapping provider answered with an error.",
    ),
    errors.ServiceCampaignRequiresAdmin: (
        403,
        "service_campaign_requires_admin",
        "Service campaigns can only be created, sent or cancelled with an admin key.",
    ),
    errors.CampaignAlreadySent: (
        409,
        "campaign_already_sent",
        "This campaign has already been sent (or cancelled); nothing was sent again.",
    ),
    errors.CampaignFinished: (
        409,
        "campaign_finished",
        "This campaign has already finished; there is nothing left to cancel.",
    ),
    errors.PushProviderMismatch: (
        422,
        "push_provider_mismatch",
        "push_provider, push_token and platform do not belong together.",
    ),
    errors.CategoryKindImmutable: (
        422,
        "category_kind_immutable",
        "A category's kind is fixed once it is created.",
    ),
    errors.CategorySettingsInvalid: (
        422,
        "category_settings_invalid",
        "A promotional category cannot be enabled by default, and a service category "
        "cannot be opted out of.",
    ),
    errors.UnknownCategory: (422, "unknown_category", "No such notification category."),
    errors.CategoryNotChangeable: (
        422,
        "category_not_changeable",
        "This category is unknown or not the user's to change "
        "(promotions follows promotional_push).",
    ),
    errors.CategoryNotAllowed: (
        422,
        "category_not_allowed",
        "Campaigns take a promotional or service category, not a transactional one.",
    ),
    errors.CategoryMismatch: (
        422,
        "category_mismatch",
        "category and category_key disagree: category must be the key's kind.",
    ),
    errors.ServiceNotificationRequiresAdmin: (
        403,
        "service_notification_requires_admin",
        "Notifications of a service category can only be sent with an admin key.",
    ),
    errors.PromotionalCategoryNotAllowed: (
        422,
        "promotional_category_not_allowed",
        "Notifications cannot use a promotional category; send a campaign instead.",
    ),
    errors.IdempotencyKeyReused: (
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was already used with a different body; "
        "use a new key for a new notification.",
    ),
    errors.RequestInProgress: (
        409,
        "request_in_progress",
        "A request with this Idempotency-Key is still being accepted; "
        "retry after the given delay for its answer.",
    ),
    errors.CampaignScheduledFieldFixed: (
        409,
        "campaign_already_scheduled",
        "A scheduled campaign keeps its audience and category (targeted was fixed when "
        "it was sent); cancel it and create another to change them.",
    ),
    errors.SignInRefused: (
        401,
        "sign_in_refused",
        "That email, password and code do not sign anybody in.",
    ),
    errors.StaffLinkInvalid: (
        410,
        "link_invalid",
        "This sign-in link is used, expired or unknown; ask an administrator for a new one.",
    ),
    errors.EnrolmentRefused: (
        422,
        "enrolment_refused",
        "The password or the authenticator code was not accepted.",
    ),
    errors.StaffExists: (409, "staff_exists", "A staff member with this email already exists."),
}


def domain_error_row(error: errors.DomainError) -> tuple[int, str, str]:
    """The table row of `error`'s class, or of its nearest listed ancestor."""
    for cls in type(error).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls]
    return DOMAIN_ERRORS[errors.DomainError]


def domain_error_message(error: errors.DomainError) -> str:
    """What to tell a person about a refusal: its own message, else the table's."""
    return error.message or domain_error_row(error)[2]


_DEFAULT_MESSAGES = {
    400: "The request could not be understood.",
    401: DOMAIN_ERRORS[errors.Unauthenticated][2],
    403: DOMAIN_ERRORS[errors.Forbidden][2],
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


ErrorPage = Callable[[HTTPException | errors.DomainError], Any]


class Api(flask_smorest.Api):
    """flask-smorest's Api with the error body of API.md."""

    ERROR_SCHEMA = ErrorSchema

    def __init__(self, *args: Any, spec_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        # Paths whose errors are pages for people (the console), not JSON bodies.
        self._error_pages: dict[str, ErrorPage] = {}
        spec_kwargs = dict(spec_kwargs or {})
        spec_kwargs["extra_plugins"] = [
            *spec_kwargs.get("extra_plugins", ()),
            BodyRefusalsPlugin(),
            openapi.SchemaRulesPlugin(),
        ]
        super().__init__(*args, spec_kwargs=spec_kwargs, **kwargs)

    def init_app(self, app: Any, *args: Any, **kwargs: Any) -> None:
        """Also answer domain refusals from the table, and a lost or locked database with
        503, not as a bug (500)."""
        super().init_app(app, *args, **kwargs)
        for function in openapi.ATTRIBUTE_FUNCTIONS:
            self.ma_plugin.converter.add_attribute_function(function)
        # Flask's own line for an unhandled error names the request path, which holds
        # identifiers; handle_http_exception logs each one without them instead.
        app.log_exception = _log_nothing
        app.register_error_handler(errors.DomainError, self.handle_domain_error)
        app.register_error_handler(sa_exc.OperationalError, self._database_unavailable)
        app.register_error_handler(sa_exc.InterfaceError, self._database_unavailable)

    def error_pages_under(self, prefix: str, page: ErrorPage) -> None:
        """Answer errors under the path `prefix` with `page` instead of the JSON body.

        Flask gives a blueprint no say over errors raised before a route matched (404,
        405), so the choice is made here, by path, for every error.
        """
        self._error_pages[prefix] = page

    def _error_page(self) -> ErrorPage | None:
        for prefix, page in self._error_pages.items():
            if request.path == prefix.rstrip("/") or request.path.startswith(prefix):
                return page
        return None

    def _database_unavailable(self, error: sa_exc.DBAPIError) -> Any:
        # A dropped connection has already been discarded by the pool, and a SQLite
        # lock outlived its busy timeout: either way, a retry may well succeed.
        log.warning("database unavailable: %s", type(error.orig).__name__)
        return self.handle_domain_error(errors.DatabaseUnavailable())

    def handle_domain_error(self, error: errors.DomainError) -> Any:
        """The error body of a domain refusal, from DOMAIN_ERRORS."""
        page = self._error_page()
        if page is not None:
            return page(error)
        code, identifier, default_message = domain_error_row(error)
        payload: dict[str, Any] = {
            "code": code,
            "status": HTTP_STATUS_CODES[code],
            "message": error.message or default_message,
            "error": identifier,
        }
        fields = getattr(error, "fields", None)
        if fields:  # per-field reasons, keyed like the validation errors of the body
            payload["errors"] = {"json": fields}
        headers: dict[str, str] = {}
        if error.retry_after is not None:
            headers["Retry-After"] = str(error.retry_after)
        return payload, code, headers

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Turn any HTTPException (and unhandled errors) into the one error shape."""
        code = error.code or 500
        if isinstance(error, InternalServerError) and error.original_exception is not None:
            log_unhandled(error.original_exception)
        page = self._error_page()
        if page is not None:
            return page(error)
        payload: dict[str, Any] = {
            "code": code,
            "status": error.name,
            "message": _DEFAULT_MESSAGES.get(code, error.description or error.name),
        }
        headers: dict[str, str] = {}
        data = getattr(error, "data", None)
        if data:
            if "message" in data:
                payload["message"] = data["message"]
            errors_ = data.get("errors", data.get("messages"))
            if errors_:
                payload["errors"] = errors_
                if code == 422 and "message" not in data:
                    payload["message"] = _DEFAULT_MESSAGES[422]
            if "error" in data:
                payload["error"] = data["error"]
            headers.update(data.get("headers") or {})
        if code == 404:
            # An unknown route is refused like an unknown resource.
            payload.setdefault("error", DOMAIN_ERRORS[errors.NotFound][1])
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


def _log_nothing(exc_info: Any) -> None:
    """Stands in for Flask.log_exception (see Api.init_app)."""


def log_unhandled(exc: BaseException) -> None:
    """Log an unhandled error with its stack but without any exception's message.

    Messages quote values - a database error its SQL parameters, a KeyError its key -
    and those values are identifiers from the request.
    """
    if not log.isEnabledFor(logging.ERROR):
        return
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, "unhandled error: %s", (type(exc).__name__,), None
    )
    record.exc_text = _stack_without_messages(exc)
    log.handle(record)


def _stack_without_messages(exc: BaseException) -> str:
    """Each exception of the chain, outermost last, as its frames and its type only."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    parts = [
        "Traceback (most recent call last):\n"
        + "".join(traceback.format_tb(link.__traceback__))
        + f"{type(link).__module__}.{type(link).__qualname__} (message withheld)"
        for link in reversed(chain)
    ]
    return "\n\nDuring handling of the above exception, another exception occurred:\n\n".join(parts)
