"""The refusals services raise: plain exceptions that know nothing of HTTP.

The web layer (mobile_api/http_errors.py) maps each class to a status code, a stable
`error` identifier and a default message in one table; adding a refusal is a class
here and a row there.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal of the request; `message`, when given, replaces the default wording."""

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message or type(self).__name__)
        self.message = message
        # Whole seconds after which trying again may succeed, when the refusal is temporary.
        self.retry_after = retry_after


class Unauthenticated(DomainError):
    """No valid bearer credential."""


class Forbidden(DomainError):
    """The credential may not call this endpoint."""


class NotFound(DomainError):
    """No such resource (or not visible to this caller)."""


class InstallationExists(DomainError):
    """The installation is registered already; only its device token may update it."""


class DatabaseUnavailable(DomainError):
    """The database is unreachable or locked."""

    def __init__(self, message: str | None = None, *, retry_after: int | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)


class InvalidCursor(DomainError):
    """A pagination cursor this service did not make."""


class AccountTerminated(DomainError):
    """The account is terminated; no device may register to it."""


class LocationConsentRequired(DomainError):
    """Places need the location preference and the OS permission."""


class MappingProviderUnavailable(DomainError):
    """The mapping provider is busy or down."""


class MappingProviderTimeout(DomainError):
    """The mapping provider did not answer in time."""


class MappingProviderError(DomainError):
    """The mapping provider answered with an error."""


class ServiceCampaignRequiresAdmin(DomainError):
    """Service campaigns are created, sent and cancelled by admin keys only."""


class CampaignAlreadySent(DomainError):
    """The campaign was sent or cancelled already."""


class CampaignFinished(DomainError):
    """The campaign has finished; nothing is left to cancel."""


class PushProviderMismatch(DomainError):
    """A push token, provider and platform that do not belong together."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__("push_provider, push_token and platform do not belong together.")
        # What is wrong with which body field, reported as validation errors are.
        self.fields = fields


class CategoryKindImmutable(DomainError):
    """A category's kind is fixed once it is created."""


class CategorySettingsInvalid(DomainError):
    """A category's settings break the rules of its kind."""


class UnknownCategory(DomainError):
    """No such notification category."""


class CategoryNotChangeable(DomainError):
    """The category is unknown or not the user's to change."""


class CategoryNotAllowed(DomainError):
    """Campaigns take promotional or service categories only."""


class CategoryMismatch(DomainError):
    """category and category_key disagree."""


class ServiceNotificationRequiresAdmin(DomainError):
    """Notifications of a service category are sent by admin keys only."""


class PromotionalCategoryNotAllowed(DomainError):
    """Notifications never use a promotional category."""


class IdempotencyKeyReused(DomainError):
    """The Idempotency-Key was used before with another body."""


class RequestInProgress(DomainError):
    """A request with the same Idempotency-Key is still being accepted."""

    def __init__(self, message: str | None = None, *, retry_after: int | None = 1) -> None:
        super().__init__(message, retry_after=retry_after)


class CampaignScheduledFieldFixed(DomainError):
    """A scheduled campaign keeps its audience and category."""


class SignInRefused(DomainError):
    """The email, password and TOTP code do not sign anybody in (whichever part was wrong)."""


class StaffLinkInvalid(DomainError):
    """The one-time sign-in link is used, expired or unknown."""


class EnrolmentRefused(DomainError):
    """The chosen password or the authenticator code was not accepted."""


class StaffExists(DomainError):
    """A staff member with this email exists already."""
