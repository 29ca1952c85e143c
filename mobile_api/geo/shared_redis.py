"""The Redis connection the places cache and the provider limiter share."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(redis_url: str) -> redis.Redis:
    """A client for the gateway's shared state, with timeouts that fit inside a lookup."""
    # Both the cache and the limiter sit inside a lookup's deadline: short socket timeouts and a
    # single immediate retry (for a pooled connection Redis dropped), not redis-py's default
    # retries with exponential backoff.
    return redis.Redis.from_url(
        redis_url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 1),
    )
