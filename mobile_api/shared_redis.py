"""A Redis client for shared state read inside a request's deadline (places cache, pacing)."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(redis_url: str) -> redis.Redis:
    """A client with timeouts that fit inside a lookup or a hand-off."""
    # The places cache and the limiters sit inside a deadline: short socket timeouts and a
    # single immediate retry (for a pooled connection Redis dropped), not redis-py's default
    # retries with exponential backoff.
    return redis.Redis.from_url(
        redis_url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 1),
    )
