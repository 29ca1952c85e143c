"""No analytics without analytics consent: the OS/app version history follows the preference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import bearer

Register = Callable[..., tuple[dict[str, Any], str]]


def _set_analytics(client: FlaskClient, token: str, granted: bool) -> None:
    response = client.put(
        "/v1/devices/me/preferences", json={"analytics": granted}, headers=bearer(token)
    )
    assert response.status_code == 200, response.get_json()


def _upgrade(client: FlaskClient, token: str, os_version: str, app_version: str) -> None:
    response = client.patch(
        "/v1/devices/me",
        json={"os_version": os_version, "app_version": app_version},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.get_json()


def _history(client: FlaskClient, token: str) -> list[dict[str, Any]]:
    response = client.get("/v1/devices/me/export", headers=bearer(token))
    assert response.status_code == 200
    history: list[dict[str, Any]] = response.get_json()["telemetry"]["version_history"]
    return history


def _version_changes(client: FlaskClient, make_key: Callable[[str], str]) -> dict[str, Any]:
    response = client.get("/v1/insights/devices", headers=bearer(make_key("marketing")))
    assert response.status_code == 200
    changes: dict[str, Any] = response.get_json()["version_changes"]
    return changes


def test_without_analytics_consent_only_the_current_versions_are_kept(
    client: FlaskClient, register: Register
) -> None:
    _, token = register(os_version="13", app_version="1.0.0")

    _upgrade(client, token, "14", "1.1.0")

    device = client.get("/v1/devices/me", headers=bearer(token)).get_json()
    assert (device["os_version"], device["app_version"]) == ("14", "1.1.0")
    assert _history(client, token) == []


def test_with_analytics_consent_the_history_is_kept_and_withdrawal_erases_it(
    client: FlaskClient, register: Register
) -> None:
    _, token = register(os_version="13", app_version="1.0.0")
    _set_analytics(client, token, True)
    _upgrade(client, token, "14", "1.1.0")
    assert [(c["field"], c["old_value"], c["new_value"]) for c in _history(client, token)] == [
        ("os_version", "13", "14"),
        ("app_version", "1.0.0", "1.1.0"),
    ]

    _set_analytics(client, token, False)

    assert _history(client, token) == []
    _upgrade(client, token, "15", "1.2.0")
    assert _history(client, token) == []
    device = client.get("/v1/devices/me", headers=bearer(token)).get_json()
    assert (device["os_version"], device["app_version"]) == ("15", "1.2.0")


def test_insights_count_version_changes_of_consenting_devices_and_say_how_many(
    client: FlaskClient, register: Register, make_key: Callable[[str], str]
) -> None:
    consenting = [register(os_version="13", app_version="1.0.0")[1] for _ in range(5)]
    others = [register(os_version="13", app_version="1.0.0")[1] for _ in range(3)]
    for token in consenting:
        _set_analytics(client, token, True)
    for token in consenting + others:
        _upgrade(client, token, "14", "1.1.0")

    changes = _version_changes(client, make_key)

    assert changes["devices_covered"] == 5
    assert changes["os_version"] == {"changes": 5, "devices": 5}
    assert changes["app_version"] == {"changes": 5, "devices": 5}

    _set_analytics(client, consenting[0], False)
    changes = _version_changes(client, make_key)
    assert changes["devices_covered"] == 4
    # Four devices: too few to show, and the withdrawn one is no longer among them.
    assert changes["os_version"] == {"changes": None, "devices": None}
