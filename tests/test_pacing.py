"""Pacing (mobile_api/pacing.py): requests spaced apart in a process, on a host, or deployment-wide.

Used by the places gateway (the mapping provider's one request a second) and by dispatch
(a push provider's messages per second); their own tests check that each keeps to it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from mobile_api.pacing import (
    FileLimiter,
    InProcessLimiter,
    Limiter,
    NoSlot,
    RedisLimiter,
    make_limiter,
)
from tests.conftest import REDIS_URL

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _reserved_waits(make: Callable[[Callable[[float], None]], list[Limiter]]) -> list[float]:
    """Six back-to-back reservations alternating over the limiters; the waits they were given.

    The sleep is recorded instead of taken, so the assertion is about the slots the
    limiters hand out, not about how late a loaded machine wakes a thread.
    """
    waits: list[float] = []
    limiters = make(waits.append)
    for i in range(6):
        limiters[i % 2].acquire(max_wait=5.0)
    return waits


def _assert_spaced(waits: list[float]) -> None:
    # The first caller goes at once (no sleep); each later one waits one interval more
    # than the one before, less the few milliseconds between the calls.
    assert len(waits) == 5, waits
    steps = [b - a for a, b in itertools.pairwise([0.0, *waits])]
    assert all(0.15 <= step <= 0.2 + 1e-3 for step in steps), waits


def test_in_process_limiter_spaces_requests_across_gateways() -> None:
    def make(sleep: Callable[[float], None]) -> list[Limiter]:
        shared = InProcessLimiter(0.2, sleep=sleep)
        return [shared, shared]

    _assert_spaced(_reserved_waits(make))


def test_redis_limiter_spaces_requests_across_processes(
    redis_prefix: tuple[redis.Redis, str],
) -> None:
    client, prefix = redis_prefix

    # Two limiters on two connections, as two worker processes would have, sharing one key.
    def make(sleep: Callable[[float], None]) -> list[Limiter]:
        return [
            RedisLimiter(client, prefix + "slot", 0.2, sleep=sleep),
            RedisLimiter(redis.Redis.from_url(REDIS_URL), prefix + "slot", 0.2, sleep=sleep),
        ]

    _assert_spaced(_reserved_waits(make))


def test_file_limiter_spaces_requests_across_limiters_of_one_file(tmp_path: Path) -> None:
    # Two limiters on one file, as two worker processes of a host would have.
    def make(sleep: Callable[[float], None]) -> list[Limiter]:
        return [FileLimiter(tmp_path / "slot", 0.2, sleep=sleep) for _ in range(2)]

    _assert_spaced(_reserved_waits(make))


def test_file_limiter_disregards_a_slot_the_clock_has_stepped_back_from(tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    FileLimiter(slot, 1.0, clock=lambda: time.time() + 3600).acquire(max_wait=1.0)
    # An hour back, that slot is further away than any lookup could have reserved.
    assert FileLimiter(slot, 1.0, max_ahead=6.0).acquire(max_wait=1.0) == 0.0


def test_file_limiter_refuses_rather_than_running_unthrottled(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    limiter = make_limiter(None, 1.0, key="test:file", slot_file=str(tmp_path / "a-file" / "slot"))
    with pytest.raises(NoSlot) as info:
        limiter.acquire(max_wait=1.0)
    assert info.value.retry_after is None


def test_redis_limiter_refuses_rather_than_running_unthrottled() -> None:
    limiter = make_limiter(UNREACHABLE_REDIS_URL, key="test:unreachable")
    with pytest.raises(NoSlot) as info:
        limiter.acquire(max_wait=1.0)
    assert info.value.retry_after is None


def test_the_factory_picks_redis_then_the_slot_file_then_the_process(tmp_path: Path) -> None:
    assert isinstance(make_limiter(REDIS_URL, 0.5, key="test:factory"), RedisLimiter)
    assert isinstance(
        make_limiter(None, 0.5, key="test:factory", slot_file=str(tmp_path / "slot")), FileLimiter
    )
    assert isinstance(make_limiter(None, 0.5, key="test:factory"), InProcessLimiter)
