"""The mapping-provider gateway: places near a point and the area around it, minimised."""

from __future__ import annotations

from mobile_api.geo.cache import (
    Cache,
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
    "make_gateway",
    "make_limiter",
]


def make_gateway(
    domain: str,
    scheme: str,
    user_agent: str,
    precision_decimals: int,
    redis_url: str | None,
    timeout: float = 5.0,
    cache_ttl: float = DEFAULT_CACHE_TTL,
    on_lookup: LookupHook | None = None,
) -> PlacesGateway:
    """Build the gateway from settings: Redis-backed cache and limiter when redis_url is set."""
    return PlacesGateway(
        domain=domain,
        scheme=scheme,
        user_agent=user_agent,
        precision_decimals=precision_decimals,
        timeout=timeout,
        cache=make_cache(redis_url),
        limiter=make_limiter(redis_url, 1.0),
        cache_ttl=cache_ttl,
        on_lookup=on_lookup,
    )
