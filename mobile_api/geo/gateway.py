"""The places gateway: what the app may ask of the mapping provider, and how little it tells it.

The user's exact position enters ``search``/``reverse`` and goes no further than this module:
it is coarsened to a cell (``geo.grid``: rounded to ``precision_decimals``, or the approximate
grid) before anything is cached, rate-limited or sent, and it is used afterwards only to compute
distances locally.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from geographiclib.geodesic import Geodesic

from mobile_api.geo.cache import Cache, MemoryCache
from mobile_api.geo.errors import (
    ProviderError,
    ProviderFailure,
    ProviderTimeout,
    ProviderUnavailable,
)
from mobile_api.geo.grid import Cell, Precision, grid_cell, rounded_cell
from mobile_api.geo.nominatim import NominatimProvider
from mobile_api.geo.provider import PlacesProvider
from mobile_api.geo.records import Area, Place
from mobile_api.pacing import InProcessLimiter, Limiter, NoSlot

log = logging.getLogger(__name__)

MAX_LIMIT = 40  # Nominatim returns at most 40 results; the API allows the same.
DEFAULT_CACHE_TTL = 24 * 3600.0
# Half the height of the searched box around the coarse cell; the box also covers the cell
# itself, so every place within about this distance of the user's exact point is inside it.
SEARCH_RADIUS_M = 2_500.0
_METRES_PER_DEGREE = 111_320.0

# The least time an upstream request is given after waiting for its rate-limit slot.
_MIN_REQUEST_BUDGET = 1.0

_WGS84 = Geodesic.WGS84
_WGS84_A = 6_378_137.0  # semi-major axis, metres
_WGS84_E2 = 6.69437999014e-3  # first eccentricity squared
_PLANAR_LIMIT_M = 10_000.0
_T = TypeVar("_T")

# on_lookup(kind, cache, outcome): kind is search|reverse, cache hit|miss, and outcome
# ok|unavailable|timeout|error. It never receives coordinates.
LookupHook = Callable[[str, str, str], None]

ProviderFactory = Callable[..., PlacesProvider]


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> int:
    """Return the WGS84 distance between two points in whole metres."""
    # Near places (all of a bounded search) are measured on the plane tangent at their mean
    # latitude, scaled by the ellipsoid's radii of curvature there: within 10 km this is a few
    # centimetres from the geodesic and about a hundred times cheaper. Farther, the geodesic.
    phi = math.radians((lat1 + lat2) / 2)
    sin_phi = math.sin(phi)
    w = 1.0 - _WGS84_E2 * sin_phi * sin_phi
    prime_vertical = _WGS84_A / math.sqrt(w)
    meridional = prime_vertical * (1.0 - _WGS84_E2) / w
    dlon = (lon2 - lon1 + 180.0) % 360.0 - 180.0
    distance = math.hypot(
        math.radians(dlon) * prime_vertical * math.cos(phi),
        math.radians(lat2 - lat1) * meridional,
    )
    if distance > _PLANAR_LIMIT_M:
        distance = _WGS84.Inverse(lat1, lon1, lat2, lon2, Geodesic.DISTANCE)["s12"]
    return round(distance)


def _check_point(lat: float, lon: float) -> None:
    # Messages name the problem, never the value: they may end up in logs.
    for value, bound, name in ((lat, 90.0, "latitude"), (lon, 180.0, "longitude")):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number")
        if not math.isfinite(value) or abs(value) > bound:
            raise ValueError(f"{name} out of range")


def normalise_term(category: str | None, query: str | None) -> str:
    """Return the search term: the category or the query, trimmed, case-folded, spaces collapsed."""
    if (category is None) == (query is None):
        raise ValueError("give exactly one of category or query")
    term = " ".join(str(category if category is not None else query).split()).casefold()
    if not term:
        raise ValueError("the search term is empty")
    return term


def _box(cell: Cell) -> tuple[float, float, float, float]:
    """Return (south, west, north, east): the cell and SEARCH_RADIUS_M around it, from it alone."""
    half_lat = SEARCH_RADIUS_M / _METRES_PER_DEGREE + cell.half_height
    # Degrees of longitude shrink towards the poles; cap the widening near them.
    scale = max(math.cos(math.radians(cell.lat)), 0.1)
    half_lon = SEARCH_RADIUS_M / (_METRES_PER_DEGREE * scale) + cell.half_width
    places = cell.decimals
    return (
        round(max(cell.lat - half_lat, -90.0), places) + 0.0,
        round(max(cell.lon - half_lon, -180.0), places) + 0.0,
        round(min(cell.lat + half_lat, 90.0), places) + 0.0,
        round(min(cell.lon + half_lon, 180.0), places) + 0.0,
    )


class PlacesGateway:
    """Searches places and names areas through one mapping provider, minimising what it learns.

    Thread-safe: share one instance per process. Every lookup runs within ``timeout`` seconds in
    total (cache, rate-limit wait and HTTP together).
    """

    def __init__(
        self,
        *,
        domain: str,
        scheme: str = "https",
        user_agent: str,
        precision_decimals: int = 2,
        timeout: float = 5.0,
        cache: Cache | None = None,
        limiter: Limiter | None = None,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        on_lookup: LookupHook | None = None,
        provider_factory: ProviderFactory = NominatimProvider,
    ) -> None:
        if not 0 <= precision_decimals <= 6:
            raise ValueError("precision_decimals must be between 0 and 6")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._provider = provider_factory(domain=domain, scheme=scheme, user_agent=user_agent)
        self._decimals = precision_decimals
        self._timeout = timeout
        self._cache: Cache = cache if cache is not None else MemoryCache()
        self._limiter: Limiter = limiter if limiter is not None else InProcessLimiter(1.0)
        self._cache_ttl = cache_ttl
        self._on_lookup = on_lookup

    @property
    def attribution(self) -> str:
        """The provider's attribution text, to be shown with its results."""
        return self._provider.attribution

    def close(self) -> None:
        """Release the provider's connections."""
        self._provider.close()

    def search(
        self,
        lat: float,
        lon: float,
        *,
        category: str | None = None,
        query: str | None = None,
        limit: int = 20,
        precision: Precision = Precision.PRECISE,
    ) -> list[Place]:
        """Return up to limit places matching category or query near the point, nearest first."""
        started = time.monotonic()
        _check_point(lat, lon)
        term = normalise_term(category, query)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")
        cell = self.cell(lat, lon, precision)
        # The term goes last: the fields before it have fixed formats, so keys cannot collide.
        key = f"search|{cell.key}|{limit}|{term}"
        box = _box(cell)
        found, cache_state = self._cached(
            "search",
            key,
            started,
            lambda t: [p.to_json() for p in self._provider.search(term, box, limit, t)],
        )
        places = [
            dataclasses.replace(p, distance_m=_distance_m(lat, lon, p.lat, p.lon))
            for p in map(Place.from_json, found)
        ]
        places.sort(key=lambda p: (p.distance_m or 0, p.name))
        self._report("search", cache_state, "ok")
        return places

    def reverse(self, lat: float, lon: float, *, precision: Precision = Precision.PRECISE) -> Area:
        """Return the city-level area around the point."""
        started = time.monotonic()
        _check_point(lat, lon)
        cell = self.cell(lat, lon, precision)
        found, cache_state = self._cached(
            "reverse",
            f"reverse|{cell.key}",
            started,
            lambda t: self._provider.reverse(cell.lat, cell.lon, t).to_json(),
        )
        self._report("reverse", cache_state, "ok")
        return Area.from_json(found)

    def cell(self, lat: float, lon: float, precision: Precision) -> Cell:
        """The coarse cell the point is known by outside this process, at that precision."""
        if precision is Precision.APPROXIMATE:
            return grid_cell(lat, lon)
        return rounded_cell(lat, lon, self._decimals)

    def _cached(
        self, kind: str, key: str, started: float, call: Callable[[float], _T]
    ) -> tuple[_T, str]:
        """The cached answer for `key` ("hit"), else the provider's, cached on the way ("miss")."""
        value: _T | None = self._cache.get(key)
        if value is not None:
            return value, "hit"
        try:
            # A slot that leaves the request less than its minimum budget is refused now:
            # waiting for it would only end in a timeout, and would spend a provider slot.
            budget = min(_MIN_REQUEST_BUDGET, self._timeout / 2)
            elapsed = time.monotonic() - started
            try:
                waited = self._limiter.acquire(max_wait=self._timeout - elapsed - budget)
            except NoSlot as exc:
                raise ProviderUnavailable(exc.retry_after, f"mapping provider {exc}") from None
            if waited > 0:
                # Queued behind other lookups: one of them may have fetched this very answer.
                value = self._cache.get(key)
                if value is not None:
                    return value, "hit"
            remaining = self._timeout - (time.monotonic() - started)
            if remaining <= 0:
                raise ProviderTimeout("no time left for the mapping provider request")
            value = call(remaining)
        except ProviderFailure as exc:
            outcome = _OUTCOMES.get(type(exc), "error")
            log.warning("mapping provider %s failed (%s): %s", kind, outcome, exc)
            self._report(kind, "miss", outcome)
            raise
        self._cache.set(key, value, self._cache_ttl)
        return value, "miss"

    def _report(self, kind: str, cache_state: str, outcome: str) -> None:
        if self._on_lookup is None:
            return
        try:
            self._on_lookup(kind, cache_state, outcome)
        except Exception:
            # Metrics must never break a lookup.
            log.exception("on_lookup hook failed")


_OUTCOMES: dict[type[Any], str] = {
    ProviderUnavailable: "unavailable",
    ProviderTimeout: "timeout",
    ProviderError: "error",
}
