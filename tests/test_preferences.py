"""Preferences, the consent ledger and the device's own export."""

from __future__ import annotations

import pytest

from tests.conftest import bearer


def consents(client, token, **params):
    response = client.get("/v1/devices/me/consents", headers=bearer(token), query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_everything_is_off_until_granted(client, register):
    _, token = register()
    prefs = client.get("/v1/devices/me/preferences", headers=bearer(token))
    assert prefs.get_json() == {
        "promotional_push": False,
        "location_services": False,
        "analytics": False,
        "categories": {},
        "quiet_hours": None,
    }
    assert consents(client, token) == {"items": [], "next_cursor": None}


def test_each_change_appends_exactly_one_record(client, register):
    _, token = register()
    put = client.put(
        "/v1/devices/me/preferences",
        json={"promotional_push": True, "analytics": False, "policy_version": "2024-05"},
        headers=bearer(token),
    )
    assert put.status_code == 200
    assert put.get_json()["promotional_push"] is True
    # analytics was already false: no record for it.
    items = consents(client, token)["items"]
    assert [(i["purpose"], i["granted"], i["source"], i["policy_version"]) for i in items] == [
        ("promotional_push", True, "app", "2024-05")
    ]
    # Repeating the same choice records nothing.
    client.put("/v1/devices/me/preferences", json={"promotional_push": True}, headers=bearer(token))
    assert len(consents(client, token)["items"]) == 1
    client.put(
        "/v1/devices/me/preferences", json={"promotional_push": False}, headers=bearer(token)
    )
    items = consents(client, token)["items"]
    assert [(i["purpose"], i["granted"]) for i in items] == [
        ("promotional_push", True),
        ("promotional_push", False),
    ]
    assert items[0]["recorded_at"] <= items[1]["recorded_at"]


def test_os_permission_changes_are_recorded_from_check_ins(client, register):
    _, token = register(push_permission="granted", location_permission="not_determined")
    client.patch(
        "/v1/devices/me",
        json={"push_permission": "denied", "location_permission": "not_determined"},
        headers=bearer(token),
    )
    client.patch("/v1/devices/me", json={"push_permission": "denied"}, headers=bearer(token))
    client.patch("/v1/devices/me", json={"location_permission": "precise"}, headers=bearer(token))
    items = consents(client, token)["items"]
    assert [(i["purpose"], i["granted"], i["source"]) for i in items] == [
        ("os_push_permission", True, "os_settings"),
        ("os_location_permission", True, "os_settings"),  # "granted unless denied"
        ("os_push_permission", False, "os_settings"),
        ("os_location_permission", True, "os_settings"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"promotional_push": "yes"},
        {"analytics": 1},
        {"analytics": None},
        {"marketing_emails": True},
        {"policy_version": "v" * 33},
        [],
    ],
)
def test_bad_preference_bodies_change_nothing(client, register, body):
    _, token = register()
    response = client.put("/v1/devices/me/preferences", json=body, headers=bearer(token))
    assert response.status_code == 422
    assert client.get("/v1/devices/me/preferences", headers=bearer(token)).get_json() == {
        "promotional_push": False,
        "location_services": False,
        "analytics": False,
        "categories": {},
        "quiet_hours": None,
    }
    assert consents(client, token)["items"] == []


def test_consents_paginate_with_opaque_cursor(client, register):
    _, token = register()
    for i in range(5):
        client.put(
            "/v1/devices/me/preferences", json={"analytics": i % 2 == 0}, headers=bearer(token)
        )
    first = consents(client, token, limit=2)
    assert len(first["items"]) == 2
    second = consents(client, token, limit=2, cursor=first["next_cursor"])
    third = consents(client, token, limit=2, cursor=second["next_cursor"])
    assert len(third["items"]) == 1
    assert third["next_cursor"] is None
    granted = [i["granted"] for page in (first, second, third) for i in page["items"]]
    assert granted == [True, False, True, False, True]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": "many"},
        {"cursor": "not-a-cursor"},
        {"cursor": "WyJ4Il0"},
    ],
)
def test_bad_pagination_is_422(client, register, params):
    _, token = register()
    response = client.get("/v1/devices/me/consents", headers=bearer(token), query_string=params)
    assert response.status_code == 422


def test_ledger_cannot_be_rewritten(app, client, register):
    from mobile_api.extensions import db
    from models import ConsentRecord

    _, token = register()
    client.put("/v1/devices/me/preferences", json={"analytics": True}, headers=bearer(token))
    with app.app_context():
        record = db.session.query(ConsentRecord).one()
        record.granted = False
        with pytest.raises(RuntimeError, match="append-only"):
            db.session.commit()
        db.session.rollback()


def test_export_holds_everything_about_the_device(client, register):
    device, token = register(
        push_token="push-123", account_id="acct-9", push_permission="granted", timezone="UTC"
    )
    client.put(
        "/v1/devices/me/preferences",
        json={"location_services": True, "policy_version": "2024-05"},
        headers=bearer(token),
    )
    export = client.get("/v1/devices/me/export", headers=bearer(token))
    assert export.status_code == 200
    doc = export.get_json()
    assert doc["device"]["id"] == device["id"]
    assert doc["device"]["installation_id"] == device["installation_id"]
    assert doc["device"]["push_token"] == "push-123"
    assert doc["device"]["account_id"] == "acct-9"
    assert doc["preferences"]["location_services"] is True
    assert [c["purpose"] for c in doc["consents"]] == ["os_push_permission", "location_services"]
    assert "token_hash" not in str(doc)
    assert export.headers["Cache-Control"] == "no-store"
