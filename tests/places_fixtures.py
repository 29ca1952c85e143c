"""Fixtures for the places tests: an app pointed at a loopback Nominatim, devices with consent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import bearer
from tests.fakes.nominatim_server import FakeNominatim, RecordedRequest

APP_USER_AGENT = "mobile_api-tests/1.0 (places; ops@example.com)"

# An exact position whose digits are unlikely to appear anywhere by chance (Munich).
LAT, LON = 48.137154, 11.576124
ROUNDED_LAT, ROUNDED_LON = "48.14", "11.58"


@pytest.fixture
def nominatim() -> Iterator[FakeNominatim]:
    """A loopback Nominatim recording every request it receives."""
    with FakeNominatim() as fake:
        yield fake


@pytest.fixture
def places_settings(nominatim: FakeNominatim) -> dict[str, Any]:
    """Settings that point the app's gateway at the loopback Nominatim."""
    return {
        "GEOCODER_DOMAIN": nominatim.domain,
        "GEOCODER_SCHEME": "http",
        "GEOCODER_USER_AGENT": APP_USER_AGENT,
        "GEOCODER_TIMEOUT": 3.0,
    }


@pytest.fixture
def app(app_factory: Callable[..., Flask], places_settings: dict[str, Any]) -> Flask:
    """The app under test, its gateway on the loopback Nominatim (overrides conftest's app)."""
    return app_factory(**places_settings)


@pytest.fixture
def located(
    client: FlaskClient, register: Callable[..., tuple[dict[str, Any], str]]
) -> Callable[..., tuple[dict[str, Any], str]]:
    """Register a device and set its location consent; returns (device json, token)."""

    def make(
        location_services: bool = True,
        location_permission: str | None = "precise",
        **overrides: Any,
    ) -> tuple[dict[str, Any], str]:
        device, token = register(location_permission=location_permission, **overrides)
        response = client.put(
            "/v1/devices/me/preferences",
            json={"location_services": location_services},
            headers=bearer(token),
        )
        assert response.status_code == 200, response.get_json()
        return device, token

    return make


@pytest.fixture
def device_token(located: Callable[..., tuple[dict[str, Any], str]]) -> str:
    """The token of a device that allows precise location."""
    return located()[1]


def search(
    client: FlaskClient, token: str, headers: dict[str, str] | None = None, **body: Any
) -> TestResponse:
    """POST /v1/places/search with a default body (a cafe near LAT, LON)."""
    payload: dict[str, Any] = {"lat": LAT, "lon": LON, "category": "cafe"}
    payload.update(body)
    payload = {k: v for k, v in payload.items() if v is not None}
    return client.post(
        "/v1/places/search", json=payload, headers={**bearer(token), **(headers or {})}
    )


def reverse(
    client: FlaskClient, token: str, headers: dict[str, str] | None = None, **body: Any
) -> TestResponse:
    """POST /v1/places/reverse with a default body (LAT, LON)."""
    payload: dict[str, Any] = {"lat": LAT, "lon": LON}
    payload.update(body)
    return client.post(
        "/v1/places/reverse", json=payload, headers={**bearer(token), **(headers or {})}
    )


def raw_post(client: FlaskClient, path: str, token: str, text: str) -> TestResponse:
    """POST a JSON text as is (for NaN, Infinity and huge numbers json.dumps would not write)."""
    return client.post(
        path,
        data=text,
        headers={**bearer(token), "Content-Type": "application/json"},
    )


def everything_sent(request: RecordedRequest) -> str:
    """The whole of one upstream request as one string: path, query and headers."""
    return json.dumps([request.path, request.query, request.headers])


def unique_term() -> str:
    """A free-text query no other test (or test run) uses: a fresh cache cell."""
    return f"kiosk {uuid.uuid4().hex[:8]}"
