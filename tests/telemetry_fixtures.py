"""Fixtures and helpers of the telemetry and insights tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import bearer

EVENTS = "/v1/telemetry/events"


def rfc3339(moment: datetime) -> str:
    """An aware datetime as an RFC 3339 UTC string."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event(**overrides: Any) -> dict[str, Any]:
    """A valid event with a fresh event_id; None removes a field."""
    body: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "name": "app_open",
        "occurred_at": rfc3339(datetime.now(UTC) - timedelta(minutes=1)),
        "properties": {"screen": "home", "cold_start": True, "ms": 412},
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def analytics_device(
    client: FlaskClient, register: Callable[..., tuple[dict[str, Any], str]]
) -> Callable[..., tuple[dict[str, Any], str]]:
    """Register a device whose user allowed analytics; returns (device json, token)."""

    def make(**overrides: Any) -> tuple[dict[str, Any], str]:
        device, token = register(**overrides)
        response = client.put(
            "/v1/devices/me/preferences", json={"analytics": True}, headers=bearer(token)
        )
        assert response.status_code == 200, response.get_json()
        return device, token

    return make
