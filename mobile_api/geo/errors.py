"""Typed failures of the mapping provider, independent of the HTTP client behind them.

Messages never carry coordinates or provider URLs: a later layer may log these exceptions.
"""

from __future__ import annotations


class ProviderFailure(Exception):
    """Base class: the mapping provider could not answer this lookup."""


class ProviderUnavailable(ProviderFailure):
    """The provider is rate-limiting us, down, unreachable, or our request budget is spent."""

    def __init__(
        self,
        retry_after: float | None = None,
        message: str = "mapping provider unavailable",
    ) -> None:
        super().__init__(message)
        # Seconds the caller should wait before trying again, when known (HTTP Retry-After).
        self.retry_after = retry_after


class ProviderTimeout(ProviderFailure):
    """The provider did not answer within the lookup's deadline."""


class ProviderError(ProviderFailure):
    """The provider answered with an error or with something we could not read."""
