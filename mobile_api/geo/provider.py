"""The mapping provider behind the gateway: geopy's Nominatim on a minimal HTTP transport.

Everything here receives coordinates that the gateway has already coarsened; nothing here ever
sees the user's exact position. Swapping the provider means writing another class with the
``PlacesProvider`` shape (any geopy geocoder can reuse the transport and the error translation).
"""

from __future__ import annotations

import http.cookiejar
import logging
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypedDict

import requests
import urllib3.exceptions
from geopy.adapters import AdapterHTTPError, RequestsAdapter, get_retry_after
from geopy.exc import (
    GeocoderQuotaExceeded,
    GeocoderRateLimited,
    GeocoderTimedOut,
    GeocoderUnavailable,
    GeopyError,
)
from geopy.geocoders import Nominatim
from requests.structures import CaseInsensitiveDict

from mobile_api.geo.errors import (
    ProviderError,
    ProviderFailure,
    ProviderTimeout,
    ProviderUnavailable,
)

log = logging.getLogger(__name__)

OSM_ATTRIBUTION = "Data © OpenStreetMap contributors, ODbL 1.0. https://osm.org/copyright"

# Nominatim zoom 12 is "town / borough": the answer names the city and district, and Nominatim
# does not resolve a street or building at this level.
REVERSE_ZOOM = 12


class PlaceRecord(TypedDict):
    """One place as a provider reports it (JSON-compatible, so it can be cached as is)."""

    name: str
    category: str
    lat: float
    lon: float
    address: str


class AreaRecord(TypedDict):
    """The coarse area around a point (JSON-compatible)."""

    city: str | None
    district: str | None
    region: str | None
    country: str | None
    country_code: str | None


class PlacesProvider(Protocol):
    """What the gateway needs from a mapping provider; every position given is already coarse."""

    attribution: str

    def search(
        self,
        term: str,
        box: tuple[float, float, float, float],
        limit: int,
        timeout: float,
    ) -> list[PlaceRecord]:
        """Return up to limit places matching term inside box (south, west, north, east)."""
        ...

    def reverse(self, lat: float, lon: float, timeout: float) -> AreaRecord:
        """Return the city-level area containing the point."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# --- HTTP transport -------------------------------------------------------------------


class _RefuseAllCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that neither stores nor returns any cookie."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


class MinimalSession(requests.Session):
    """A requests session that remembers nothing and adds nothing.

    No cookies are kept (the provider cannot link one lookup to the next), no redirect is
    followed (a redirect could carry the query to a host other than the configured provider),
    no environment settings (.netrc credentials, CA or proxy variables) are read, only an Accept
    header is added to what the caller sends, and a numeric timeout is enforced as one deadline
    for the whole exchange: connecting, waiting for the headers and reading the body.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cookies = requests.cookies.RequestsCookieJar(policy=_RefuseAllCookies())
        self.headers = CaseInsensitiveDict({"Accept": "application/json"})
        self.trust_env = False
        self.max_redirects = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send without following redirects, reading the body within the timeout as a deadline."""
        kwargs["allow_redirects"] = False
        timeout = kwargs.get("timeout")
        if kwargs.get("stream") or not isinstance(timeout, int | float):
            return super().send(request, **kwargs)
        # requests applies a numeric timeout afresh to the connect and to each receive, so a
        # provider that answers late and then stalls mid-body could hold us twice the timeout
        # or more. Connect and headers share one budget (urllib3's total); the body is read
        # here, one receive at a time, each allowed only what is left of the deadline.
        deadline = time.monotonic() + timeout
        kwargs["stream"] = True
        kwargs["timeout"] = urllib3.Timeout(total=timeout)
        response = super().send(request, **kwargs)
        try:
            body = self._read_body(response, deadline)
        except BaseException:
            response.raw.close()  # abandoned mid-body: this connection cannot be reused
            raise
        # What requests' own ``content`` does once it has read a body; close() then hands the
        # connection back to the pool for the next request.
        response._content = body
        response._content_consumed = True  # type: ignore[attr-defined]
        response.close()
        return response

    @staticmethod
    def _read_body(response: requests.Response, deadline: float) -> bytes:
        """Read the whole body by single receives, failing as a timeout once past the deadline."""
        body = bytearray()
        connection = response.raw.connection
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise requests.ReadTimeout("response exceeded its deadline")
                if connection is not None and connection.sock is not None:
                    connection.sock.settimeout(left)
                chunk = response.raw.read1(64 * 1024)
                if not chunk:
                    break
                body += chunk
        except urllib3.exceptions.ReadTimeoutError:
            raise requests.ReadTimeout("response exceeded its deadline") from None
        except urllib3.exceptions.HTTPError as exc:
            raise requests.RequestException(f"unreadable response: {type(exc).__name__}") from None
        return bytes(body)


class MinimalRequestsAdapter(RequestsAdapter):
    """geopy's requests adapter on a MinimalSession, without hidden retries (max_retries=0)."""

    def __init__(
        self,
        *,
        proxies: dict[str, str] | None,
        ssl_context: ssl.SSLContext | None,
        pool_maxsize: int = 10,
    ) -> None:
        super().__init__(
            proxies=proxies,
            ssl_context=ssl_context,
            pool_connections=2,
            pool_maxsize=pool_maxsize,
            max_retries=0,
        )
        # Keep the transport adapters geopy configured (TLS context, pool, no retries) and move
        # them onto our session; geopy's own session has made no request yet.
        configured: requests.Session = self.session
        session = MinimalSession()
        session.proxies = configured.proxies
        for prefix, transport in configured.adapters.items():
            session.mount(prefix, transport)
        self.session: requests.Session = session


# --- Logging --------------------------------------------------------------------------

_QUERY_STRING = re.compile(r"\?[^\s\"']*")
_DECIMAL = re.compile(r"(?<![\d.])-?\d{1,3}\.\d+(?![\d.])")

# geopy logs every request URL at DEBUG and error bodies at INFO; urllib3 logs request lines,
# retries and header problems with their URL. Our URLs carry the (coarse) position, which must
# never reach a log. A level setting would not hold (anyone, a test included, may turn these
# loggers up to DEBUG), so a filter rewrites each record instead; it only runs for records that
# are going to be emitted, so it costs nothing when these loggers are quiet.
_URL_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.util.retry",
)


class _RedactLocations(logging.Filter):
    """Blanks URL query strings (and, for geopy, every decimal number) out of log records."""

    def __init__(self, decimals: bool) -> None:
        super().__init__()
        self._decimals = decimals

    def filter(self, record: logging.LogRecord) -> bool:
        message = _QUERY_STRING.sub("?[redacted]", record.getMessage())
        if self._decimals:
            message = _DECIMAL.sub("[redacted]", message)
        record.msg, record.args = message, None
        if record.exc_info:
            # Tracebacks of HTTP errors quote the URL; keep only a redacted rendering of them.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = (
                None,
                _QUERY_STRING.sub("?[redacted]", text),
            )
        return True


def redact_location_logging() -> None:
    """Install, once, the filters that keep positions out of geopy's and urllib3's log records."""
    targets = [("geopy", True)] + [(name, False) for name in _URL_LOGGERS]
    for name, decimals in targets:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactLocations) for f in logger.filters):
            logger.addFilter(_RedactLocations(decimals))


# --- Errors ---------------------------------------------------------------------------


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
_LOOKUP_ERRORS = (
    GeopyError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)


# --- Nominatim ------------------------------------------------------------------------

_CITY_KEYS = ("city", "town", "village", "municipality", "hamlet")
_DISTRICT_KEYS = ("city_district", "borough", "suburb", "district")
_REGION_KEYS = ("state", "region", "province", "state_district")
_STREET_KEYS = ("road", "pedestrian", "footway", "square", "place")


def _first(address: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = address.get(key)
        if isinstance(value, str) and value:
            return value
    return None


class NominatimProvider:
    """Nominatim (the OpenStreetMap geocoder) through geopy, on the minimal transport.

    Searches send the term as Nominatim's free-text ``q``: a category such as "cafe" is one of
    Nominatim's special phrases, which it resolves to the matching amenity inside the bounded
    viewbox, and a free-text query works the same way. geopy's structured search has no amenity
    field, so the free-text form is the one that serves both.
    """

    attribution = OSM_ATTRIBUTION

    def __init__(
        self, *, domain: str, scheme: str, user_agent: str, pool_maxsize: int = 10
    ) -> None:
        if not user_agent or not user_agent.strip():
            raise ValueError("an app-level user agent is required by the provider's usage policy")
        redact_location_logging()
        self._geocoder = Nominatim(
            domain=domain,
            scheme=scheme,
            user_agent=user_agent,
            adapter_factory=lambda proxies, ssl_context: MinimalRequestsAdapter(
                proxies=proxies, ssl_context=ssl_context, pool_maxsize=pool_maxsize
            ),
        )

    def search(
        self,
        term: str,
        box: tuple[float, float, float, float],
        limit: int,
        timeout: float,
    ) -> list[PlaceRecord]:
        """Return up to limit places matching term inside box (south, west, north, east)."""
        south, west, north, east = box
        try:
            locations = self._geocoder.geocode(
                term,
                exactly_one=False,
                limit=limit,
                addressdetails=True,
                viewbox=[(south, west), (north, east)],
                bounded=True,
                timeout=timeout,
            )
            return [record for loc in locations or () if (record := self._place(loc.raw))]
        except _LOOKUP_ERRORS as exc:
            failure = translate_geopy_error(exc)
        # Raised outside the handler, so it has no __context__: geopy's exception quotes the URL.
        raise failure

    def reverse(self, lat: float, lon: float, timeout: float) -> AreaRecord:
        """Return the city-level area containing the point (all None where there is none)."""
        try:
            location = self._geocoder.reverse(
                (lat, lon),
                exactly_one=True,
                addressdetails=True,
                zoom=REVERSE_ZOOM,
                timeout=timeout,
            )
            address = location.raw.get("address", {}) if location is not None else {}
            if not isinstance(address, Mapping):
                raise TypeError("address is not an object")
        except _LOOKUP_ERRORS as exc:
            failure = translate_geopy_error(exc)
        else:
            return self._area(address)
        raise failure

    @staticmethod
    def _area(address: Mapping[str, Any]) -> AreaRecord:
        """Reduce Nominatim address details to the coarse fields, dropping streets and numbers."""
        country_code = _first(address, ("country_code",))
        return AreaRecord(
            city=_first(address, _CITY_KEYS),
            district=_first(address, _DISTRICT_KEYS),
            region=_first(address, _REGION_KEYS),
            country=_first(address, ("country",)),
            country_code=country_code.upper() if country_code else None,
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._geocoder.adapter.session.close()

    @staticmethod
    def _place(raw: Mapping[str, Any]) -> PlaceRecord | None:
        """Reduce one Nominatim result to a PlaceRecord, or None when it has no usable position."""
        try:
            lat, lon = float(raw["lat"]), float(raw["lon"])
        except (KeyError, TypeError, ValueError):
            return None
        display = str(raw.get("display_name") or "")
        name = raw.get("name") or display.split(",", 1)[0].strip()
        address = raw.get("address")
        address = address if isinstance(address, Mapping) else {}
        street = _first(address, _STREET_KEYS)
        number = address.get("house_number")
        if street and isinstance(number, str):
            street = f"{street} {number}"
        parts = [p for p in (street, _first(address, _CITY_KEYS)) if p]
        if not parts and "," in display:
            parts = [display.split(",", 1)[1].strip()]
        return PlaceRecord(
            name=str(name),
            category=str(raw.get("type") or raw.get("category") or raw.get("class") or ""),
            lat=lat,
            lon=lon,
            address=", ".join(parts),
        )
