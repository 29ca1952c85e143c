"""No analytics without analytics consent: app events and the OS/app version history follow it."""

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


def _telemetry(client: FlaskClient, token: str) -> dict[str, list[dict[str, Any]]]:
    response = client.get("/v1/devices/me/export", headers=bearer(token))
    assert response.status_code == 200
    section: dict[str, list[dict[str, Any]]] = response.get_json()["telemetry"]
    return section


def _history(client: FlaskClient, token: str) -> list[dict[str, Any]]:
    return _telemetry(client, token)["version_history"]


def _send_event(client: FlaskClient, token: str, event_id: str) -> dict[str, Any]:
    event = {"event_id": event_id, "name": "app_open", "occurred_at": "2026-12-01T10:00:00Z"}
    response = client.post("/v1/telemetry/events", json={"events": [event]}, headers=bearer(token))
    assert response.status_code == 202, response.get_json()
    answer: dict[str, Any] = response.get_json()
    return answer


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


def test_withdrawing_analytics_consent_erases_the_events_sent_under_it(
    client: FlaskClient, register: Register
) -> None:
    _, token = register()
    _, other = register()
    for device_token in (token, other):
        _set_analytics(client, device_token, True)
        assert _send_event(client, device_token, "e-1")["accepted"] == 1
    assert [e["event_id"] for e in _telemetry(client, token)["events"]] == ["e-1"]

    _set_analytics(client, token, False)

    assert _telemetry(client, token)["events"] == []
    assert _send_event(client, token, "e-2")["reason"] == "analytics_consent_off"
    assert [e["event_id"] for e in _telemetry(client, other)["events"]] == ["e-1"]
    # Consent given again: collection starts afresh, the erased event can come again.
    _set_analytics(client, token, True)
    assert _send_event(client, token, "e-1")["accepted"] == 1


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
