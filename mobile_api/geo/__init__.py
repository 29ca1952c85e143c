"""The mapping-provider gateway: places near a point and the area around it, minimised."""

from __future__ import annotations

from mobile_api.geo.cache import (
    Cache,
    FileLimiter,
    InProcessLimiter,
    Limiter,
    MemoryCache,
    RedisCache,
    RedisLimiter,
    make_cache,
    make_limiter,
)
from mobile_api.geo.errors import (
    ProviderError,
    ProviderFailure,
    ProviderTimeout,
    ProviderUnavailable,
)
from mobile_api.geo.gateway import (
    DEFAULT_CACHE_TTL,
    MAX_LIMIT,
    Area,
    LookupHook,
    Place,
    PlacesGateway,
)
from mobile_api.geo.provider import NominatimProvider, PlacesProvider

__all__ = [
    "DEFAULT_CACHE_TTL",
    "MAX_LIMIT",
    "Area",
    "Cache",
    "FileLimiter",
    "InProcessLimiter",
    "Limiter",
    "LookupHook",
    "MemoryCache",
    "NominatimProvider",
    "Place",
    "PlacesGateway",
    "PlacesProvider",
    "ProviderError",
    "ProviderFailure",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RedisCache",
    "RedisLimiter",
    "make_cache",
    "make_limiter",
]
