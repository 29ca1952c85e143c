"""Device registration, check-in, unregistration through the HTTP API."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import bearer, device_body


def test_register_returns_device_and_token_once(client, app_key):
    body = device_body(
        platform="ios",
        os_version="17.4.1",
        device_model="iPhone15,2",
        app_version="5.2.0",
        locale="id-id",
        timezone="Asia/Jakarta",
        push_token="fcm-token-1",
        push_permission="granted",
        location_permission="approximate",
        account_id="acct-42",
    )
    response = client.post("/v1/devices", json=body, headers=bearer(app_key))
    assert response.status_code == 201
    payload = response.get_json()
    device = payload["device"]
    assert payload["device_token"].startswith("dt_")
    assert device["installation_id"] == body["installation_id"]
    assert device["locale"] == "id-ID"  # canonical case
    assert device["preferences"] == {
        "promotional_push": False,
        "location_services": False,
        "analytics": False,
    }
    assert device["created_at"].endswith("Z")
    me = client.get("/v1/devices/me", headers=bearer(payload["device_token"]))
    assert me.status_code == 200
    assert "device_token" not in me.get_json()
    assert me.get_json()["id"] == device["id"]


def test_second_registration_without_token_is_refused(client, app_key, register):
    device, _ = register()
    again = client.post(
        "/v1/devices",
        json=device_body(installation_id=device["installation_id"], os_version="15"),
        headers=bearer(app_key),
    )
    assert again.status_code == 409
    assert again.get_json()["error"] == "installation_exists"
    # Nothing changed on the stored device.
    assert again.get_json().get("device") is None


def test_foreign_token_cannot_take_over(client, app_key, register):
    victim, _ = register()
    _, other_token = register()
    attempt = client.post(
        "/v1/devices",
        json=device_body(installation_id=victim["installation_id"], os_version="99"),
        headers={**bearer(app_key), "X-Device-Token": other_token},
    )
    assert attempt.status_code == 409


def test_reregistration_with_own_token_rotates_it(client, app_key, register):
    device, old_token = register(push_token="tok-a")
    response = client.post(
        "/v1/devices",
        json=device_body(
            installation_id=device["installation_id"], os_version="15", push_token="tok-b"
        ),
        headers={**bearer(app_key), "X-Device-Token": old_token},
    )
    assert response.status_code == 200
    new_token = response.get_json()["device_token"]
    assert new_token != old_token
    assert response.get_json()["device"]["os_version"] == "15"
    assert response.get_json()["device"]["id"] == device["id"]
    assert client.get("/v1/devices/me", headers=bearer(old_token)).status_code == 401
    assert client.get("/v1/devices/me", headers=bearer(new_token)).status_code == 200


def test_push_token_moves_to_the_newest_device(client, register):
    _, first_token = register(push_token="shared-token")
    _, second_token = register(push_token="shared-token")
    first = client.get("/v1/devices/me", headers=bearer(first_token)).get_json()
    second = client.get("/v1/devices/me", headers=bearer(second_token)).get_json()
    assert first["push_token"] is None
    assert second["push_token"] == "shared-token"
    # And on check-in too.
    client.patch("/v1/devices/me", json={"push_token": "shared-token"}, headers=bearer(first_token))
    second = client.get("/v1/devices/me", headers=bearer(second_token)).get_json()
    assert second["push_token"] is None


def test_check_in_updates_fields_and_last_seen(client, register):
    device, token = register(app_version="1.0", locale="en-US")
    response = client.patch(
        "/v1/devices/me",
        json={
            "os_version": "15",
            "app_version": "1.1",
            "locale": None,
            "timezone": "Europe/Berlin",
        },
        headers=bearer(token),
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["os_version"] == "15"
    assert body["app_version"] == "1.1"
    assert body["locale"] is None
    assert body["timezone"] == "Europe/Berlin"
    assert body["last_seen_at"] > device["last_seen_at"]


def test_check_in_cannot_clear_required_os_version(client, register):
    _, token = register(os_version="14")
    response = client.patch("/v1/devices/me", json={"os_version": None}, headers=bearer(token))
    assert response.status_code == 422
    assert "os_version" in response.get_json()["errors"]["json"]


def test_check_in_cannot_change_identity_fields(client, register):
    _, token = register()
    for field, value in (("installation_id", "other-install"), ("platform", "ios"), ("id", "x")):
        response = client.patch("/v1/devices/me", json={field: value}, headers=bearer(token))
        assert response.status_code == 422, field
        assert response.get_json()["errors"]["json"][field] == ["Unknown field."]


def test_new_push_token_clears_invalid_mark(app, client, register):
    from mobile_api.extensions import db
    from models import Device, utcnow

    device, token = register(push_token="old")
    with app.app_context():
        row = db.session.get(Device, device["id"])
        row.push_token_invalid_at = utcnow()
        db.session.commit()
    assert (
        client.get("/v1/devices/me", headers=bearer(token)).get_json()["push_token_valid"] is False
    )
    client.patch("/v1/devices/me", json={"push_token": "new"}, headers=bearer(token))
    assert (
        client.get("/v1/devices/me", headers=bearer(token)).get_json()["push_token_valid"] is True
    )


def test_unregister_erases_device_and_ledger(app, client, register):
    import sqlalchemy as sa

    from mobile_api.extensions import db
    from models import ConsentRecord, Device

    device, token = register(push_permission="granted")
    client.put("/v1/devices/me/preferences", json={"analytics": True}, headers=bearer(token))
    assert client.delete("/v1/devices/me", headers=bearer(token)).status_code == 204
    assert client.get("/v1/devices/me", headers=bearer(token)).status_code == 401
    with app.app_context():
        assert db.session.get(Device, device["id"]) is None
        count = db.session.scalar(
            sa.select(sa.func.count()).where(ConsentRecord.device_id == device["id"])
        )
        assert count == 0


# Validation table: (field, bad value) → 422 naming the field.
INVALID: list[tuple[str, Any]] = [
    ("installation_id", "short"),
    ("installation_id", "x" * 129),
    ("installation_id", "has space-123"),
    ("installation_id", 12345678),
    ("platform", "windows"),
    ("platform", None),
    ("os_version", ""),
    ("os_version", "1" * 33),
    ("os_version", 17),
    ("device_model", "m" * 65),
    ("device_model", "line\nbreak"),
    ("app_version", "v" * 33),
    ("locale", "english please"),
    ("locale", "id_ID"),
    ("timezone", "Mars/Olympus"),
    ("timezone", "+07:00"),
    ("push_token", "t" * 4097),
    ("push_token", "has space"),
    ("push_permission", "yes"),
    ("location_permission", "always"),
    ("account_id", "a" * 129),
    ("account_id", ["list"]),
]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_registration_validation(client, app_key, field, value):
    body = device_body()
    body[field] = value
    response = client.post("/v1/devices", json=body, headers=bearer(app_key))
    assert response.status_code == 422
    payload = response.get_json()
    assert payload["code"] == 422
    assert payload["status"] == "Unprocessable Entity"
    assert field in payload["errors"]["json"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("locale", "zh-Hant-TW"),
        ("locale", "es-419"),
        ("timezone", "America/Argentina/Buenos_Aires"),
        ("push_token", "x" * 4096),
        ("installation_id", "A.b_c:d-9"),
    ],
)
def test_registration_accepts_edge_values(client, app_key, field, value):
    response = client.post(
        "/v1/devices", json=device_body(**{field: value}), headers=bearer(app_key)
    )
    assert response.status_code == 201, response.get_json()


def test_validation_errors_do_not_store_anything(app, client, app_key):
    import sqlalchemy as sa

    from mobile_api.extensions import db
    from models import Device

    body = device_body(timezone="Nowhere/Land")
    assert client.post("/v1/devices", json=body, headers=bearer(app_key)).status_code == 422
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Device)) == 0


def test_a_fresh_registration_can_be_changed_by_other_services(app):
    # Registration answers without reading the row back; the device it hands out
    # must still be a live, persistent row that later service calls can change.
    from mobile_api.extensions import db
    from mobile_api.services import devices
    from models import Device

    with app.app_context():
        result = devices.register(db.session, device_body(), None)
        devices.update_preferences(db.session, result.device, {"analytics": True}, None)
        db.session.remove()
        assert db.session.get(Device, result.device.id).analytics is True


def test_only_a_hash_of_the_device_token_is_stored(app, register):
    import sqlalchemy as sa

    from mobile_api.extensions import db

    _, token = register(push_token="push-abc")
    with app.app_context():
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(sa.select(table)).all():
                assert all(token not in str(value) for value in row), table.name
