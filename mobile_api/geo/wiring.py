"""The app's one gateway, assembled from its settings (GEOCODER_*, LOCATION_PRECISION_DECIMALS…)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from mobile_api.geo.cache import make_cache
from mobile_api.geo.gateway import LookupHook, PlacesGateway
from mobile_api.pacing import make_limiter

EXTENSION = "places_gateway"


def build_gateway(
    settings: Mapping[str, Any], on_lookup: LookupHook | None = None
) -> PlacesGateway:
    """A gateway configured from the app's settings.

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


def init_app(app: Flask, on_lookup: LookupHook | None = None) -> None:
    """Create the app's one gateway (shared by its threads) from its settings."""
    app.extensions[EXTENSION] = build_gateway(app.config, on_lookup)


def current_gateway() -> PlacesGateway:
    """The gateway of the current app."""
    gateway: PlacesGateway = current_app.extensions[EXTENSION]
    return gateway
