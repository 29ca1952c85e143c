"""Error translation: geopy's exceptions (and unreadable payloads) as typed provider failures."""

from __future__ import annotations

from geopy.adapters import AdapterHTTPError, get_retry_after
from geopy.exc import (
    GeocoderQuotaExceeded,
    GeocoderRateLimited,
    GeocoderTimedOut,
    GeocoderUnavailable,
    GeopyError,
)

from mobile_api.geo.errors import (
    ProviderError,
    ProviderFailure,
    ProviderTimeout,
    ProviderUnavailable,
)


def translate_geopy_error(exc: Exception) -> ProviderFailure:
    """Map a geopy (or payload) failure to our typed errors; messages carry no URL or body.

    geopy maps HTTP 503 to GeocoderTimedOut (and 429 to GeocoderRateLimited), so the HTTP status
    kept on the exception's cause decides before the exception class does.
    """
    cause = exc.__cause__
    http_error = cause if isinstance(cause, AdapterHTTPError) else None
    status = http_error.status_code if http_error is not None else None
    if isinstance(exc, GeocoderRateLimited):
        return ProviderUnavailable(exc.retry_after, "mapping provider rate-limited the request")
    if http_error is not None and status == 503:
        return ProviderUnavailable(
            get_retry_after(http_error.headers),
            "mapping provider unavailable (HTTP 503)",
        )
    if isinstance(exc, GeocoderUnavailable | GeocoderQuotaExceeded):
        return ProviderUnavailable(None, "mapping provider unreachable or over quota")
    if isinstance(exc, GeocoderTimedOut):
        return ProviderTimeout("mapping provider timed out")
    if status is not None:
        return ProviderError(f"mapping provider answered HTTP {status}")
    if isinstance(exc, GeopyError):
        return ProviderError(f"mapping provider error ({type(exc).__name__})")
    return ProviderError("mapping provider sent a payload we could not read")


# geopy turns every transport failure into a GeopyError, but lets a parsing callback's own error
# through; these are what an unexpected payload raises in geopy's parsing or in ours.
LOOKUP_ERRORS = (
    GeopyError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)
