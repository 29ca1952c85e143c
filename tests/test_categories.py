"""Notification categories: the catalogue, admin changes, device choices and the consent rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mobile_api.extensions import db
from mobile_api.services import categories
from models import Category
from tests.conftest import bearer
from tests.privacy_fixtures import consents, rows_mentioning, staff

__all__ = ["staff"]

ORDER_UPDATES = {
    "name": "Order updates",
    "kind": "transactional",
    "default_enabled": True,
    "android_channel_id": "orders",
    "ios_interruption_level": "time-sensitive",
}
DEALS = {
    "name": "Partner deals",
    "kind": "promotional",
    "android_channel_id": "deals",
    "ios_interruption_level": "passive",
}


def put_category(client, headers, key, body):
    return client.put(f"/v1/admin/categories/{key}", json=body, headers=headers)


def test_built_ins_are_listed_to_every_role_and_to_devices(client, staff, register):
    _, device_token = register()
    for headers in [staff("app"), staff("marketing"), staff("support"), bearer(device_token)]:
        response = client.get("/v1/categories", headers=headers)
        assert response.status_code == 200, response.get_json()
        items = {item["key"]: item for item in response.get_json()["items"]}
        assert items["promotions"]["kind"] == "promotional"
        assert items["promotions"]["default_enabled"] is False
        assert items["service"]["kind"] == "service"
        assert items["service"]["user_can_opt_out"] is False
        assert set(items["service"]) == {
            "key",
            "name",
            "kind",
            "default_enabled",
            "user_can_opt_out",
            "android_channel_id",
            "ios_interruption_level",
        }
    assert client.get("/v1/categories").status_code == 401


def test_admin_creates_then_updates_a_category(client, staff):
    created = put_category(client, staff("admin"), "order_updates", ORDER_UPDATES)
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["user_can_opt_out"] is True
    updated = put_category(
        client, staff("admin"), "order_updates", {**ORDER_UPDATES, "android_channel_id": "orders2"}
    )
    assert updated.status_code == 200
    listed = client.get("/v1/categories", headers=staff("marketing")).get_json()["items"]
    assert [c["android_channel_id"] for c in listed if c["key"] == "order_updates"] == ["orders2"]
    actions = client.get(
        "/v1/admin/audit", headers=staff("admin"), query_string={"target": "order_updates"}
    ).get_json()["items"]
    assert [a["action"] for a in actions] == ["category.updated", "category.created"]


def test_only_admins_define_categories(client, staff):
    response = put_category(client, staff("marketing"), "deals", DEALS)
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"


@pytest.mark.parametrize("key", ["promotions", "service", "order_updates"])
def test_a_kind_never_changes(client, staff, key):
    put_category(client, staff("admin"), "order_updates", ORDER_UPDATES)
    current = {
        c["key"]: c for c in client.get("/v1/categories", headers=staff("admin")).json["items"]
    }
    other_kind = "transactional" if current[key]["kind"] != "transactional" else "promotional"
    body = {
        "name": "x",
        "kind": other_kind,
        "android_channel_id": "x",
        "ios_interruption_level": "active",
    }
    response = put_category(client, staff("admin"), key, body)
    assert response.status_code == 422
    assert response.get_json()["error"] == "category_kind_immutable"
    after = {
        c["key"]: c for c in client.get("/v1/categories", headers=staff("admin")).json["items"]
    }
    assert after[key] == current[key]


@pytest.mark.parametrize(
    ("key", "body", "error"),
    [
        ("deals", {**DEALS, "default_enabled": True}, "category_settings_invalid"),
        ("deals", {**DEALS, "user_can_opt_out": False}, "category_settings_invalid"),
        (
            "outage",
            {**DEALS, "kind": "service", "user_can_opt_out": True},
            "category_settings_invalid",
        ),
        ("Deals", DEALS, None),
        ("d", DEALS, None),
        ("deals", {**DEALS, "ios_interruption_level": "critical"}, None),
        ("deals", {**DEALS, "kind": "marketing"}, None),
        ("deals", {**DEALS, "colour": "red"}, None),
        ("deals", {k: v for k, v in DEALS.items() if k != "android_channel_id"}, None),
    ],
)
def test_bad_categories_are_refused(client, staff, key, body, error):
    response = put_category(client, staff("admin"), key, body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json().get("error") == error
    keys = {c["key"] for c in client.get("/v1/categories", headers=staff("admin")).json["items"]}
    assert keys == {"promotions", "service"}


def test_preferences_carry_the_categories_a_user_may_change(client, staff, register):
    put_category(client, staff("admin"), "order_updates", ORDER_UPDATES)
    put_category(client, staff("admin"), "deals", DEALS)
    put_category(
        client,
        staff("admin"),
        "outage",
        {**DEALS, "kind": "service", "ios_interruption_level": "time-sensitive"},
    )
    _, token = register()
    prefs = client.get("/v1/devices/me/preferences", headers=bearer(token)).get_json()
    # promotions is promotional_push; service categories are nobody's to change.
    assert prefs["categories"] == {"deals": False, "order_updates": True}

    response = client.put(
        "/v1/devices/me/preferences",
        json={"categories": {"order_updates": False, "deals": False}, "policy_version": "v2"},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["categories"] == {"deals": False, "order_updates": False}
    client.put(
        "/v1/devices/me/preferences",
        json={"categories": {"order_updates": True}},
        headers=bearer(token),
    )
    history = [(c["purpose"], c["granted"], c["policy_version"]) for c in consents(client, token)]
    # Only changes are recorded: deals was off already.
    assert history == [
        ("category:order_updates", False, "v2"),
        ("category:order_updates", True, None),
    ]


@pytest.mark.parametrize("key", ["promotions", "service", "nonexistent"])
def test_a_category_the_user_cannot_change_is_refused_and_nothing_changes(
    client, staff, register, key
):
    put_category(client, staff("admin"), "order_updates", ORDER_UPDATES)
    _, token = register()
    response = client.put(
        "/v1/devices/me/preferences",
        json={"analytics": True, "categories": {"order_updates": False, key: True}},
        headers=bearer(token),
    )
    assert response.status_code == 422
    assert response.get_json()["error"] == "category_not_changeable"
    prefs = client.get("/v1/devices/me/preferences", headers=bearer(token)).get_json()
    assert prefs["analytics"] is False
    assert prefs["categories"] == {"order_updates": True}
    assert consents(client, token) == []


def test_quiet_hours_are_a_setting_not_a_consent(client, register):
    _, token = register()
    url = "/v1/devices/me/preferences"
    set_ = client.put(
        url, json={"quiet_hours": {"start": "22:00", "end": "07:30"}}, headers=bearer(token)
    )
    assert set_.status_code == 200
    assert set_.get_json()["quiet_hours"] == {"start": "22:00", "end": "07:30"}
    # Other changes leave them alone; null hands them back to the deployment.
    client.put(url, json={"analytics": True}, headers=bearer(token))
    assert client.get(url, headers=bearer(token)).get_json()["quiet_hours"] == {
        "start": "22:00",
        "end": "07:30",
    }
    cleared = client.put(url, json={"quiet_hours": None}, headers=bearer(token))
    assert cleared.get_json()["quiet_hours"] is None
    assert [c["purpose"] for c in consents(client, token)] == ["analytics"]


@pytest.mark.parametrize(
    "quiet_hours",
    [
        {"start": "24:00", "end": "07:00"},
        {"start": "7:00", "end": "08:00"},
        {"start": "22:00"},
        "22-07",
    ],
)
def test_bad_quiet_hours_are_refused(client, register, quiet_hours):
    _, token = register()
    response = client.put(
        "/v1/devices/me/preferences", json={"quiet_hours": quiet_hours}, headers=bearer(token)
    )
    assert response.status_code == 422


def test_choices_are_exported_and_erased_with_the_device(app, client, staff, register):
    put_category(client, staff("admin"), "order_updates", ORDER_UPDATES)
    device, token = register()
    client.put(
        "/v1/devices/me/preferences",
        json={
            "categories": {"order_updates": False},
            "quiet_hours": {"start": "21:00", "end": "08:00"},
        },
        headers=bearer(token),
    )
    doc = client.get("/v1/devices/me/export", headers=bearer(token)).get_json()
    assert doc["notification_settings"] == {
        "categories": {"order_updates": False},
        "quiet_hours": {"start": "21:00", "end": "08:00"},
    }
    assert [c["purpose"] for c in doc["consents"]] == ["category:order_updates"]
    assert client.delete("/v1/devices/me", headers=bearer(token)).status_code == 204
    assert [
        table for table, _ in rows_mentioning(app, device["id"]) if table != "audit_events"
    ] == []


def test_who_may_receive_which_category(app, client, staff, register):
    put_category(client, staff("admin"), "order_updates", ORDER_UPDATES)
    put_category(client, staff("admin"), "deals", DEALS)
    device, token = register(push_token="tok-1", push_permission="granted")

    def may() -> dict[str, bool]:
        with app.app_context():
            result = {
                category.key: categories.may_receive(db.session, device["id"], category)
                for category in db.session.query(Category)
            }
            db.session.remove()
            return result

    # Opt-in: nothing promotional yet; transactional by its default; service always.
    assert may() == {"promotions": False, "service": True, "order_updates": True, "deals": False}
    put = lambda body: client.put("/v1/devices/me/preferences", json=body, headers=bearer(token))  # noqa: E731
    put({"categories": {"deals": True}})
    assert may()["deals"] is False  # promotional_push is the master switch
    put({"promotional_push": True})
    assert may() == {"promotions": True, "service": True, "order_updates": True, "deals": True}
    put({"categories": {"order_updates": False, "deals": False}})
    assert may() == {"promotions": True, "service": True, "order_updates": False, "deals": False}
    client.patch("/v1/devices/me", json={"push_permission": "denied"}, headers=bearer(token))
    assert not any(may().values())


def test_the_consent_ledger_has_one_writer():
    """Only services/consent.py appends consent records; everyone else calls it."""
    root = Path(__file__).resolve().parents[1] / "mobile_api"
    writers = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if re.search(
            r"ConsentRecord\(|ConsentRecord\.__table__|insert\(ConsentRecord", path.read_text()
        )
    ]
    assert writers == ["services/consent.py"]
