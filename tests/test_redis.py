"""Behaviour that needs the real Redis server: rate limits shared between workers."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.conftest import REDIS_DEFAULT, bearer, device_body

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_url() -> str:
    """The Redis server of the machine, skipped (failed under CI) when unreachable."""
    import redis

    url = os.environ.get("TEST_REDIS_URL", REDIS_DEFAULT)
    try:
        redis.Redis.from_url(url).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    return url


def test_registration_limit_is_shared_by_workers_through_redis(app_factory, redis_url):
    settings = {
        "RATELIMIT_REGISTRATION": "3 per minute",
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": "memory://",  # REDIS_URL takes over from the default
        "RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
    }
    # Two apps stand for two gunicorn workers of one deployment.
    first, second = app_factory(**settings), app_factory(**settings)
    assert first.config["RATELIMIT_STORAGE_URI"] == redis_url
    with first.app_context():
        from mobile_api.extensions import db
        from mobile_api.services import keys

        _, secret = keys.create(db.session, "app", "shared limit")
    codes = []
    for app in (first, second, first, second):
        client = app.test_client()
        codes.append(
            client.post("/v1/devices", json=device_body(), headers=bearer(secret)).status_code
        )
    assert codes == [201, 201, 201, 429]
    # The counters live in Redis, where every worker of the deployment sees them.
    import redis

    stored = redis.Redis.from_url(redis_url).keys("*" + settings["RATELIMIT_KEY_PREFIX"] + "*")
    assert stored
