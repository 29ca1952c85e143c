"""The gateway's result cache, in-process or in Redis (shared by every process of a deployment)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import redis

from mobile_api.shared_redis import connect

log = logging.getLogger(__name__)

DEFAULT_CACHE_PREFIX = "mobile_api:geo:cache:"


class Cache(Protocol):
    """A key/value store for JSON-compatible values that expire after a TTL."""

    def get(self, key: str) -> Any | None:
        """Return the value stored under key, or None when absent or expired."""
        ...

    def set(self, key: str, value: Any, ttl: float) -> None:
        """Store value under key for ttl seconds."""
        ...


class MemoryCache:
    """An in-process, thread-safe LRU cache with per-entry TTL and a bounded number of entries.

    Values are kept by reference, not copied: callers must not mutate what they store or get.
    """

    def __init__(
        self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any | None:
        """Return the live value under key (marking it recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires_at, value = entry
            if expires_at <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: Any, ttl: float) -> None:
        """Store value under key for ttl seconds, evicting the least recently used."""
        if ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class RedisCache:
    """A cache in Redis: values as JSON under ``prefix + key``, expiring with Redis' own TTL.

    Redis faults degrade to cache misses (logged): the cache is an optimisation, not a dependency.
    """

    def __init__(self, redis_client: redis.Redis, prefix: str = DEFAULT_CACHE_PREFIX) -> None:
        self._redis = redis_client
        self._prefix = prefix

    def get(self, key: str) -> Any | None:
        """Return the decoded value under key, or None when absent, expired or unreadable."""
        try:
            raw = self._redis.get(self._prefix + key)
        except redis.RedisError as exc:
            log.warning("places cache read failed, treating as a miss: %s", type(exc).__name__)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            log.warning("places cache entry is not valid JSON, treating as a miss")
            return None

    def set(self, key: str, value: Any, ttl: float) -> None:
        """Store value as JSON under key for ttl seconds."""
        if ttl <= 0:
            return
        payload = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        try:
            self._redis.set(self._prefix + key, payload, px=max(1, round(ttl * 1000)))
        except redis.RedisError as exc:
            log.warning("places cache write failed: %s", type(exc).__name__)


def make_cache(redis_url: str | None, *, prefix: str = DEFAULT_CACHE_PREFIX) -> Cache:
    """Return a RedisCache when a Redis URL is configured, else an in-process MemoryCache."""
    if redis_url:
        return RedisCache(connect(redis_url), prefix)
    return MemoryCache()
