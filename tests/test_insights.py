"""GET /v1/insights/devices: aggregates over active devices, small groups folded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.extensions import db
from mobile_api.services import insights
from models import AccountTermination, Device, DeviceVersionChange, new_id
from tests.conftest import bearer

INSIGHTS = "/v1/insights/devices"
NOW = datetime.now(UTC)


def _device(**fields: Any) -> Device:
    values: dict[str, Any] = {
        "id": new_id(),
        "installation_id": f"inst-{new_id()}",
        "token_hash": new_id(),
        "platform": "android",
        "os_version": "14",
        "app_version": "5.2.0",
        "last_seen_at": NOW - timedelta(hours=2),
    }
    values.update(fields)
    return Device(**values)


def _fleet() -> list[Device]:
    devices = [
        # android 14 / 5.2.0: 6 devices, all opted in to analytics.
        *(
            _device(
                analytics=True,
                promotional_push=i < 3,
                push_permission="granted" if i < 4 else "denied",
                location_permission="precise" if i < 2 else None,
                location_services=i < 2,
            )
            for i in range(6)
        ),
        # android 13 / 5.1.0: 5, seen 2 to 10 days ago.
        *(
            _device(
                os_version="13",
                app_version="5.1.0",
                push_permission="provisional",
                last_seen_at=NOW - timedelta(days=2 if i < 3 else 10),
            )
            for i in range(5)
        ),
        # android 12 / 5.1.0: 2, one of them not seen for 40 days.
        _device(os_version="12", app_version="5.1.0", last_seen_at=NOW - timedelta(days=40)),
        _device(os_version="12", app_version="5.1.0", location_permission="approximate"),
        # ios 17.4 / 5.2.0: 5.
        *(_device(platform="ios", os_version="17.4") for _ in range(5)),
        # ios 16.0 without an app version: 1.
        _device(platform="ios", os_version="16.0", app_version=None),
        # Not active: disabled, or their account is terminated.
        *(_device(disabled_at=NOW, analytics=True) for _ in range(3)),
        *(_device(account_id="acct-gone", analytics=True) for _ in range(2)),
        _device(account_id="acct-live"),
    ]
    return devices


@pytest.fixture
def fleet(app: Flask) -> list[str]:
    """The known data set: 20 active devices, 5 inactive; returns all device ids."""
    with app.app_context():
        devices = _fleet()
        db.session.add_all(devices)
        db.session.add(AccountTermination(account_id="acct-gone", terminated_at=NOW))
        db.session.flush()
        first, second = devices[0].id, devices[6].id
        db.session.add_all(
            [
                DeviceVersionChange(
                    device_id=first,
                    field="os_version",
                    old_value="13",
                    new_value="14",
                    changed_at=NOW - timedelta(days=3),
                ),
                DeviceVersionChange(
                    device_id=first,
                    field="app_version",
                    old_value="5.1.0",
                    new_value="5.2.0",
                    changed_at=NOW - timedelta(days=2),
                ),
                DeviceVersionChange(
                    device_id=second,
                    field="app_version",
                    old_value="5.0.0",
                    new_value="5.1.0",
                    changed_at=NOW - timedelta(days=20),
                ),
                DeviceVersionChange(
                    device_id=second,
                    field="app_version",
                    old_value="4.9.0",
                    new_value="5.0.0",
                    changed_at=NOW - timedelta(days=45),  # outside the window
                ),
            ]
        )
        db.session.commit()
        return [d.id for d in devices]


def _get(client: FlaskClient, secret: str) -> dict[str, Any]:
    response = client.get(INSIGHTS, headers=bearer(secret))
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def test_aggregates_of_a_known_fleet(
    client: FlaskClient, make_key: Callable[[str], str], fleet: list[str]
) -> None:
    body = _get(client, make_key("marketing"))

    assert body["active_devices"] == 20
    assert body["min_group_size"] == 5
    assert body["by_platform"] == [
        {"platform": "android", "devices": 14},
        {"platform": "ios", "devices": 6},
    ]
    # android 12 (2) and ios 16.0 (1) are under 5; together still under 5, so
    # the smallest shown group (ios 17.4) joins them.
    assert body["by_os_version"] == [
        {"platform": "android", "os_version": "14", "devices": 7},
        {"platform": "android", "os_version": "13", "devices": 5},
        {"platform": "other", "os_version": "other", "devices": 8},
    ]
    assert body["by_app_version"] == [
        {"platform": "android", "app_version": "5.1.0", "devices": 7},
        {"platform": "android", "app_version": "5.2.0", "devices": 7},
        {"platform": "other", "app_version": "other", "devices": 6},
    ]
    # 3, 2 and 3 devices opted in: groups under 5, withheld like the breakdowns'.
    withheld = {"devices": None, "rate": None}
    assert body["opt_in"] == {
        "promotional_push": withheld,
        "location_services": withheld,
        "analytics": {"devices": 6, "rate": 0.3},
        "os_push_permission": {"devices": 9, "rate": 0.45},
        "os_location_permission": withheld,
    }
    assert body["seen_within_days"] == {"1": 14, "7": 17, "30": 19}
    # One and two devices changed: too few to show.
    assert body["version_changes"] == {
        "days": 30,
        "os_version": {"changes": None, "devices": None},
        "app_version": {"changes": None, "devices": None},
    }
    assert body["generated_at"].endswith(("Z", "+00:00"))


def test_no_device_is_identifiable(
    client: FlaskClient, make_key: Callable[[str], str], fleet: list[str]
) -> None:
    body = _get(client, make_key("admin"))

    text = str(body)
    assert not any(device_id in text for device_id in fleet)
    assert "acct-" not in text
    for breakdown in ("by_platform", "by_os_version", "by_app_version"):
        assert all(group["devices"] >= 5 for group in body[breakdown])


def test_an_empty_fleet(client: FlaskClient, make_key: Callable[[str], str]) -> None:
    body = _get(client, make_key("marketing"))

    assert body["active_devices"] == 0
    assert body["by_platform"] == body["by_os_version"] == body["by_app_version"] == []
    assert body["opt_in"]["analytics"] == {"devices": 0, "rate": None}
    assert body["seen_within_days"] == {"1": 0, "7": 0, "30": 0}


def test_check_ins_show_up_as_version_changes(
    client: FlaskClient, make_key: Callable[[str], str], register: Callable[..., Any]
) -> None:
    tokens = [register(os_version="13", app_version="1.0.0")[1] for _ in range(5)]
    for token in tokens:
        client.patch("/v1/devices/me", json={"os_version": "14"}, headers=bearer(token))
        client.patch("/v1/devices/me", json={"app_version": "1.1.0"}, headers=bearer(token))
    client.patch("/v1/devices/me", json={"app_version": "1.2.0"}, headers=bearer(tokens[0]))

    changes = _get(client, make_key("marketing"))["version_changes"]

    assert changes["os_version"] == {"changes": 5, "devices": 5}
    assert changes["app_version"] == {"changes": 6, "devices": 5}

    # Below five devices the counts are withheld, not shown.
    client.delete("/v1/devices/me", headers=bearer(tokens[0]))
    changes = _get(client, make_key("marketing"))["version_changes"]
    assert changes["app_version"] == {"changes": None, "devices": None}


def _add(app: Flask, devices: list[Device]) -> None:
    with app.app_context():
        db.session.add_all(devices)
        db.session.commit()


def test_opt_in_rates_of_too_few_devices_are_withheld(
    app: Flask, client: FlaskClient, make_key: Callable[[str], str]
) -> None:
    secret = make_key("marketing")
    # One user alone: any rate would be that user's choice.
    _add(app, [_device(analytics=True, promotional_push=False)])
    body = _get(client, secret)
    assert body["active_devices"] == 1
    assert all(v == {"devices": None, "rate": None} for v in body["opt_in"].values())

    # Nine more who allow analytics but not promotional push: each side of each
    # purpose is now empty or a group of ten, so the counts are shown.
    _add(app, [_device(analytics=True) for _ in range(9)])
    opt_in = _get(client, secret)["opt_in"]
    assert opt_in["analytics"] == {"devices": 10, "rate": 1.0}
    assert opt_in["promotional_push"] == {"devices": 0, "rate": 0.0}

    # Four of them opt out of analytics: the opted-out group is under 5 (and could be
    # read off the total), so the count is withheld; at five it is shown.
    _add(app, [_device(analytics=False) for _ in range(4)])
    assert _get(client, secret)["opt_in"]["analytics"] == {"devices": None, "rate": None}
    _add(app, [_device(analytics=False)])
    assert _get(client, secret)["opt_in"]["analytics"] == {"devices": 10, "rate": 0.6667}


@pytest.mark.parametrize(("role", "status"), [("support", 403), ("privacy", 403), ("app", 403)])
def test_only_marketing_and_admin_may_look(
    client: FlaskClient, make_key: Callable[[str], str], role: str, status: int
) -> None:
    assert client.get(INSIGHTS, headers=bearer(make_key(role))).status_code == status


def test_devices_and_anonymous_callers_may_not_look(
    client: FlaskClient, register: Callable[..., Any]
) -> None:
    _, token = register()
    assert client.get(INSIGHTS, headers=bearer(token)).status_code == 403
    assert client.get(INSIGHTS).status_code == 401


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 9, "b": 5}, [("a", 9), ("b", 5)]),
        ({"a": 9, "b": 4, "c": 3}, [("a", 9), ("other", 7)]),
        ({"a": 9, "b": 6, "c": 1}, [("a", 9), ("other", 7)]),
        ({"a": 9, "b": 5, "c": 5, "d": 1}, [("a", 9), ("b", 5), ("other", 6)]),
        ({"a": 3, "b": 1}, [("other", 4)]),
        ({"a": 5}, [("a", 5)]),
        ({}, []),
    ],
)
def test_fold(counts: dict[str, int], expected: list[tuple[str, int]]) -> None:
    assert insights.fold(Counter(counts), "other") == expected
