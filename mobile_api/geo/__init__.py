"""The mapping-provider gateway: places near a point and the area around it, minimised.

- ``gateway``: what callers use (``PlacesGateway``); coarsening by ``grid``, then ``cache`` and the
  ``mobile_api.pacing`` limiter before the ``provider``.
- ``records``: ``Place`` and ``Area``, the one record type from provider to caller.
- ``provider``: the provider interface; ``nominatim`` implements it on ``transport`` (HTTP
  hygiene), ``redaction`` (logs) and ``geopy_errors`` (error translation).
- ``wiring``: the app's gateway, built from its settings.
"""

from __future__ import annotations

from mobile_api.geo.cache import Cache, MemoryCache, RedisCache, make_cache
from mobile_api.geo.errors import (
    ProviderError,
    ProviderFailure,
    ProviderTimeout,
    ProviderUnavailable,
)
from mobile_api.geo.gateway import (
    DEFAULT_CACHE_TTL,
    MAX_LIMIT,
    LookupHook,
    PlacesGateway,
)
from mobile_api.geo.grid import Cell, Precision
from mobile_api.geo.nominatim import NominatimProvider
from mobile_api.geo.provider import PlacesProvider
from mobile_api.geo.records import Area, Place
from mobile_api.geo.wiring import build_gateway, current_gateway, init_app

__all__ = [
    "DEFAULT_CACHE_TTL",
    "MAX_LIMIT",
    "Area",
    "Cache",
    "Cell",
    "LookupHook",
    "MemoryCache",
    "NominatimProvider",
    "Place",
    "PlacesGateway",
    "PlacesProvider",
    "Precision",
    "ProviderError",
    "ProviderFailure",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RedisCache",
    "build_gateway",
    "current_gateway",
    "init_app",
    "make_cache",
]
