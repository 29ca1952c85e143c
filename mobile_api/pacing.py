"""Pacing: requests spaced a minimum interval apart, in one process, one host or a deployment.

The mapping provider's one request a second and the push services' messages per second
(FCM_MAX_MESSAGES_PER_SECOND) are both kept this way. Without ``REDIS_URL`` the limiter is a
locked file that every process of the host shares, so the several workers of one server
(``bin/serve``) keep to the limit between them. With Redis the limit holds across the whole
deployment.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

from mobile_api.shared_redis import connect

log = logging.getLogger(__name__)


class NoSlot(Exception):
    """No slot can be had: the next one is too far away, or the shared store is unreachable."""

    def __init__(self, retry_after: float | None, message: str) -> None:
        super().__init__(message)
        # Seconds until the next free slot, when known.
        self.retry_after = retry_after


class Limiter(Protocol):
    """Spaces upstream requests at least a minimum interval apart."""

    def acquire(self, max_wait: float) -> float:
        """Wait for the next request slot and return the seconds waited.

        Raises NoSlot (with retry_after) when that slot is more than max_wait away.
        """
        ...


def _reserve(now: float, next_free: float, interval: float, max_wait: float) -> tuple[float, float]:
    """The wait for the next free slot and the free slot after it; refused if too far away."""
    start = max(now, next_free)
    wait = start - now
    if wait > max_wait:
        raise NoSlot(wait, "request budget exhausted")
    return wait, start + interval


class InProcessLimiter:
    """A thread-safe limiter for one process, on the monotonic clock.

    Each caller reserves the next free slot under the lock and sleeps outside it, so waiting callers
    are served in arrival order and never hold the lock while asleep.
    """

    def __init__(
        self,
        min_interval: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self._interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free = float("-inf")

    def acquire(self, max_wait: float) -> float:
        """Reserve the next slot and sleep until it; raise NoSlot if it is too far."""
        with self._lock:
            wait, self._next_free = _reserve(
                self._clock(), self._next_free, self._interval, max_wait
            )
        if wait > 0:
            self._sleep(wait)
        return wait


class FileLimiter:
    """A limiter shared by the processes of one host: the next free slot is kept in a file.

    Each caller takes an exclusive ``flock`` on the file (each call opens it anew, so threads
    of one process exclude each other too), reserves the next slot, writes it back and lets
    go before sleeping. Slots are on the wall clock, which every process agrees on and which
    leaves a slot written before a restart in the past. Should the clock step back, a stored
    slot more than ``max_ahead`` seconds away cannot have been reserved and is disregarded.

    If the file cannot be used the limit cannot be guaranteed, so the request is refused
    (NoSlot) rather than sent unthrottled.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        min_interval: float = 1.0,
        *,
        max_ahead: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self._path = os.fspath(path)
        self._interval = min_interval
        self._max_ahead = max_ahead
        self._clock = clock
        self._sleep = sleep

    def acquire(self, max_wait: float) -> float:
        """Reserve the next slot of the host and sleep until it; raise if it is too far."""
        if self._interval == 0:
            return 0.0
        try:
            wait = self._reserve(max_wait)
        except OSError as exc:
            log.warning("rate limiter unavailable: %s", type(exc).__name__)
            raise NoSlot(None, "rate limiter unavailable") from None
        if wait > 0:
            self._sleep(wait)
        return wait

    def _reserve(self, max_wait: float) -> float:
        os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
        with open(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600), "r+b") as slot:
            fcntl.flock(slot, fcntl.LOCK_EX)  # released when the file is closed
            now = self._clock()
            try:
                next_free = float(slot.read() or b"-inf")
            except ValueError:
                next_free = float("-inf")  # torn by a crash mid-write: start afresh
            if next_free - now > self._max_ahead:
                next_free = now
            wait, following = _reserve(now, next_free, self._interval, max_wait)
            slot.seek(0)
            slot.write(f"{following:.6f}".encode())
            slot.truncate()
        return wait


# Reserves the next free slot atomically on the Redis server's clock, so processes on different
# hosts agree on time. KEYS[1] holds the next free slot (ms since the epoch) and expires with it;
# ARGV[1] is the interval and ARGV[2] the longest acceptable wait, both in ms.
# Returns {1, wait_ms} when reserved or {0, wait_ms} when the slot is too far away.
_RESERVE_SLOT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local next_free = tonumber(redis.call('GET', KEYS[1])) or 0
local start = math.max(now, next_free)
local wait = start - now
if wait > tonumber(ARGV[2]) then
  return {0, wait}
end
local interval = tonumber(ARGV[1])
redis.call('SET', KEYS[1], start + interval, 'PX', wait + interval)
return {1, wait}
"""


class RedisLimiter:
    """A limiter shared by every process using the same Redis key (one Lua script per acquire).

    If Redis cannot be reached the limit cannot be guaranteed, so the request is refused
    (NoSlot) rather than sent unthrottled.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        key: str,
        min_interval: float = 1.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self._key = key
        self._interval_ms = round(min_interval * 1000)
        self._sleep = sleep
        self._script = redis_client.register_script(_RESERVE_SLOT)

    def acquire(self, max_wait: float) -> float:
        """Reserve the next deployment-wide slot and sleep until it; raise if it is too far."""
        if self._interval_ms == 0:
            return 0.0  # no spacing asked for (Redis refuses a zero expiry anyway)
        max_wait_ms = max(0, int(max_wait * 1000))
        try:
            reserved, wait_ms = self._script(
                keys=[self._key], args=[self._interval_ms, max_wait_ms]
            )
        except redis.RedisError as exc:
            log.warning("rate limiter unavailable: %s", type(exc).__name__)
            raise NoSlot(None, "rate limiter unavailable") from None
        wait = int(wait_ms) / 1000
        if not reserved:
            raise NoSlot(wait, "request budget exhausted")
        if wait > 0:
            self._sleep(wait)
        return wait


def make_limiter(
    redis_url: str | None,
    min_interval: float = 1.0,
    *,
    key: str,
    slot_file: str | None = None,
    max_ahead: float = 60.0,
) -> Limiter:
    """A limiter in Redis (deployment-wide), else in the slot file (host-wide), else in-process."""
    if redis_url:
        return RedisLimiter(connect(redis_url), key, min_interval)
    if slot_file:
        return FileLimiter(slot_file, min_interval, max_ahead=max_ahead)
    return InProcessLimiter(min_interval)
