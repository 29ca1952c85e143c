"""Places near me: consent gate first, then the mapping-provider gateway; faults as API errors.

The user's exact position is passed straight to the gateway, which coarsens it before anything
leaves the process and uses it afterwards only to rank results; nothing here stores or logs it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from prometheus_client import Counter

from mobile_api.errors import (
    LocationConsentRequired,
    MappingProviderError,
    MappingProviderTimeout,
    MappingProviderUnavailable,
)
from mobile_api.geo import (
    MAX_LIMIT as PROVIDER_MAX_LIMIT,
)
from mobile_api.geo import (
    Area,
    Place,
    PlacesGateway,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    make_cache,
    make_limiter,
)
from models import LOCATION_ALLOWED, Device

log = logging.getLogger(__name__)

EXTENSION = "places_gateway"

# The categories the app offers, and the term each one is searched by (Nominatim resolves
# these special phrases to the matching amenity or shop inside the search box).
CATEGORIES: dict[str, str] = {
    "atm": "atm",
    "bakery": "bakery",
    "bank": "bank",
    "bar": "bar",
    "cafe": "cafe",
    "charging_station": "charging station",
    "fast_food": "fast food",
    "fuel": "fuel",
    "hospital": "hospital",
    "hotel": "hotel",
    "library": "library",
    "parking": "parking",
    "pharmacy": "pharmacy",
    "police": "police",
    "post_office": "post office",
    "restaurant": "restaurant",
    "supermarket": "supermarket",
    "toilets": "toilets",
}

# The most places one search returns (and always asks the provider for).
MAX_LIMIT = PROVIDER_MAX_LIMIT

# Retry-After when the provider is unavailable without saying for how long.
DEFAULT_RETRY_AFTER = 30
_MAX_RETRY_AFTER = 3600

LOOKUPS = Counter(
    "mobile_api_places_lookups_total",
    "Places lookups by endpoint, cache hit/miss and outcome (counts only, never positions)",
    ["endpoint", "cache", "outcome"],
)
CONSENT_REFUSALS = Counter(
    "mobile_api_places_consent_refusals_total",
    "Places requests refused before any lookup because location consent is missing",
    ["endpoint"],
)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Places nearest first, and the attribution the provider requires beside them."""

    places: list[Place]
    attribution: str


def count_lookup(kind: str, cache: str, outcome: str) -> None:
    """Count one gateway lookup in /metrics (the gateway's on_lookup hook)."""
    LOOKUPS.labels(kind, cache, outcome).inc()


def build_gateway(
    settings: Mapping[str, Any], on_lookup: Callable[[str, str, str], None] | None = None
) -> PlacesGateway:
    """A gateway configured from the app's settings (GEOCODER_*, LOCATION_PRECISION_DECIMALS, …).

    With REDIS_URL set, the cache and the one-request-a-second limiter live in Redis under
    PLACES_REDIS_PREFIX, so every process of the deployment shares them. Without it, the
    limiter is the GEOCODER_LIMITER_FILE that every process of the host shares.
    """
    redis_url = settings.get("REDIS_URL") or None
    prefix = settings["PLACES_REDIS_PREFIX"]
    timeout = float(settings["GEOCODER_TIMEOUT"])
    interval = float(settings["GEOCODER_MIN_INTERVAL"])
    return PlacesGateway(
        domain=settings["GEOCODER_DOMAIN"],
        scheme=settings["GEOCODER_SCHEME"],
        user_agent=settings["GEOCODER_USER_AGENT"],
        precision_decimals=int(settings["LOCATION_PRECISION_DECIMALS"]),
        timeout=timeout,
        cache=make_cache(redis_url, prefix=f"{prefix}cache:"),
        limiter=make_limiter(
            redis_url,
            interval,
            key=f"{prefix}provider-slot",
            slot_file=settings.get("GEOCODER_LIMITER_FILE"),
            # No lookup reserves a slot further ahead than its own deadline allows.
            max_ahead=timeout + interval,
        ),
        cache_ttl=float(settings["PLACES_CACHE_TTL"]),
        on_lookup=on_lookup,
    )


def init_app(app: Flask) -> None:
    """Create the app's one gateway (shared by its threads) from its settings."""
    app.extensions[EXTENSION] = build_gateway(app.config, count_lookup)


def current_gateway() -> PlacesGateway:
    """The gateway of the current app."""
    gateway: PlacesGateway = current_app.extensions[EXTENSION]
    return gateway


def require_location_consent(device: Device, endpoint: str) -> None:
    """Refuse unless the user allows location use in the app and in the OS settings."""
    if device.location_services and device.location_permission in LOCATION_ALLOWED:
        return
    CONSENT_REFUSALS.labels(endpoint).inc()
    raise LocationConsentRequired()


def search(
    gateway: PlacesGateway,
    device: Device,
    lat: float,
    lon: float,
    *,
    category: str | None = None,
    query: str | None = None,
    limit: int = 20,
) -> SearchResult:
    """Places near the point matching a category (see CATEGORIES) or a free query, nearest first."""
    require_location_consent(device, "search")
    term = CATEGORIES[category] if category is not None else None
    with _provider_faults():
        # Always ask for the most the provider gives: one cache entry per cell and term serves
        # every limit, and ranking the larger set locally finds the truly nearest ones.
        places = gateway.search(lat, lon, category=term, query=query, limit=MAX_LIMIT)
    return SearchResult(places=places[:limit], attribution=gateway.attribution)


def reverse(gateway: PlacesGateway, device: Device, lat: float, lon: float) -> Area:
    """The coarse area (city, district, region, country) around the point."""
    require_location_consent(device, "reverse")
    with _provider_faults():
        return gateway.reverse(lat, lon)


@contextmanager
def _provider_faults() -> Iterator[None]:
    """Turn the gateway's typed failures into the API's 503/504/502 refusals."""
    try:
        yield
    except ProviderUnavailable as exc:
        raise MappingProviderUnavailable(retry_after=_retry_after(exc.retry_after)) from None
    except ProviderTimeout:
        raise MappingProviderTimeout() from None
    except ProviderError:
        raise MappingProviderError() from None


def _retry_after(seconds: float | None) -> int:
    """Whole seconds for Retry-After: rounded up, at least 1, the default when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER
    return max(1, min(_MAX_RETRY_AFTER, math.ceil(seconds)))
