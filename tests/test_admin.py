"""Support and privacy endpoints through the HTTP API: roles, search, disable, export, erasure."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.services.secrets import keyed_hash
from tests.conftest import bearer
from tests.privacy_fixtures import (
    audit_events,
    consents,
    rows_mentioning,
    staff,
    unique,
)

__all__ = ["staff"]

Register = Callable[..., tuple[dict[str, Any], str]]
Staff = Callable[[str], dict[str, str]]

ENDPOINTS = [
    ("get", "/v1/admin/devices", {"support"}),
    ("post", "/v1/admin/devices/{id}/disable", {"support"}),
    ("post", "/v1/admin/devices/{id}/enable", {"support"}),
    ("get", "/v1/admin/audit", {"support", "privacy"}),
    ("get", "/v1/admin/devices/{id}/export", {"privacy"}),
    ("get", "/v1/admin/accounts/{account}/export", {"privacy"}),
    ("delete", "/v1/admin/devices/{id}", {"privacy"}),
    ("delete", "/v1/admin/accounts/{account}", {"privacy"}),
    ("post", "/v1/admin/accounts/{account}/terminate", {"privacy"}),
]
ROLES = ["app", "marketing", "support", "privacy", "admin"]


@pytest.mark.parametrize(("method", "path", "allowed"), ENDPOINTS)
def test_each_endpoint_admits_only_its_roles(
    client: FlaskClient,
    register: Register,
    staff: Staff,
    method: str,
    path: str,
    allowed: set[str],
) -> None:
    account = unique("acct")
    device, device_token = register(account_id=account)
    url = path.format(id=device["id"], account=account)
    body = {"reason": "user asked"} if url.endswith("/disable") else None
    for role in ROLES:
        response = getattr(client, method)(url, json=body, headers=staff(role))
        if role in allowed or role == "admin":
            assert response.status_code in {200, 204}, (role, response.get_json())
            # The erasure and termination endpoints change state: start again.
            if method == "delete" or url.endswith("/terminate"):
                account = unique("acct")
                device, device_token = register(account_id=account)
                url = path.format(id=device["id"], account=account)
        else:
            assert response.status_code == 403, (role, url)
            assert response.get_json()["error"] == "forbidden"
    assert getattr(client, method)(url, json=body).status_code == 401
    # A device token is a real credential with the wrong role.
    response = getattr(client, method)(url, json=body, headers=bearer(device_token))
    assert response.status_code == 403


def test_search_filters_paginates_and_masks_push_tokens(
    client: FlaskClient, register: Register, staff: Staff
) -> None:
    account = unique("acct")
    token = "fcm-" + "x" * 100 + "UVWXYZ"
    first, _ = register(account_id=account, push_token=token)
    second, _ = register(account_id=account, platform="ios")
    register(account_id=unique("other"))

    response = client.get(
        "/v1/admin/devices", query_string={"account_id": account}, headers=staff("support")
    )
    assert response.status_code == 200
    body = response.get_json()
    assert [d["id"] for d in body["items"]] == [first["id"], second["id"]]
    assert body["next_cursor"] is None
    assert body["items"][0]["push_token"] == "…UVWXYZ"
    assert body["items"][1]["push_token"] is None
    assert token not in response.get_data(as_text=True)

    ios = client.get(
        "/v1/admin/devices",
        query_string={"account_id": account, "platform": "ios"},
        headers=staff("support"),
    ).get_json()["items"]
    assert [d["id"] for d in ios] == [second["id"]]
    by_install = client.get(
        "/v1/admin/devices",
        query_string={"installation_id": first["installation_id"]},
        headers=staff("support"),
    ).get_json()["items"]
    assert [d["id"] for d in by_install] == [first["id"]]

    page = client.get(
        "/v1/admin/devices",
        query_string={"account_id": account, "limit": 1},
        headers=staff("support"),
    ).get_json()
    assert [d["id"] for d in page["items"]] == [first["id"]]
    rest = client.get(
        "/v1/admin/devices",
        query_string={"account_id": account, "limit": 1, "cursor": page["next_cursor"]},
        headers=staff("support"),
    ).get_json()
    assert [d["id"] for d in rest["items"]] == [second["id"]]

    bad = client.get(
        "/v1/admin/devices", query_string={"platform": "windows"}, headers=staff("support")
    )
    assert bad.status_code == 422
    assert "platform" in bad.get_json()["errors"]["query"]


def test_disable_and_enable_are_in_the_ledger_and_the_trail(
    app: Flask, client: FlaskClient, register: Register, staff: Staff
) -> None:
    device, device_token = register()
    reason = "User Jane Doe called: lost phone"
    url = f"/v1/admin/devices/{device['id']}"
    response = client.post(
        url + "/disable",
        json={"reason": reason, "ticket": "HD-1234"},
        headers={**staff("support"), "X-Request-ID": "req-disable-1"},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["disabled"] is True
    assert body["disabled_reason"] == reason
    assert body["disabled_ticket"] == "HD-1234"
    # Disabling twice changes nothing in the ledger.
    assert (
        client.post(url + "/disable", json={"reason": reason}, headers=staff("support")).status_code
        == 200
    )

    enabled = client.post(url + "/enable", headers=staff("support"))
    assert enabled.status_code == 200
    assert enabled.get_json()["disabled"] is False
    assert enabled.get_json()["disabled_reason"] is None

    delivery = [c for c in consents(client, device_token) if c["purpose"] == "push_delivery"]
    assert [(c["granted"], c["source"]) for c in delivery] == [
        (False, "support"),
        (True, "support"),
    ]

    events = audit_events(client, staff("support"), target=device["id"])
    assert [e["action"] for e in events] == ["device.enabled", "device.disabled", "device.disabled"]
    disabled = events[-1]
    assert disabled["request_id"] == "req-disable-1"
    assert disabled["details"] == {"ticket": "HD-1234", "reason_length": len(reason)}
    assert disabled["target"] == keyed_hash(app.config["SECRET_KEY"], device["id"])
    assert disabled["actor"].startswith("key:")
    assert "Jane" not in str(events)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "x", "ticket": "a\nb"}, "ticket"),
        ({"reason": "x", "extra": 1}, "extra"),
    ],
)
def test_disable_validates_its_body(
    client: FlaskClient, register: Register, staff: Staff, body: dict[str, Any], field: str
) -> None:
    device, _ = register()
    response = client.post(
        f"/v1/admin/devices/{device['id']}/disable", json=body, headers=staff("support")
    )
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/admin/devices/nope/disable"),
        ("post", "/v1/admin/devices/nope/enable"),
        ("get", "/v1/admin/devices/nope/export"),
        ("delete", "/v1/admin/devices/nope"),
        ("get", "/v1/admin/accounts/nope/export"),
        ("delete", "/v1/admin/accounts/nope"),
    ],
)
def test_unknown_device_or_account_is_404(
    client: FlaskClient, staff: Staff, method: str, path: str
) -> None:
    body = {"reason": "x"} if path.endswith("/disable") else None
    response = getattr(client, method)(path, json=body, headers=staff("admin"))
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_audit_lists_newest_first_with_filters(
    client: FlaskClient, register: Register, staff: Staff
) -> None:
    device, _ = register()
    support = staff("support")
    for _ in range(3):
        client.post(
            f"/v1/admin/devices/{device['id']}/disable", json={"reason": "r"}, headers=support
        )
    client.post(f"/v1/admin/devices/{device['id']}/enable", headers=support)
    client.get(f"/v1/admin/devices/{device['id']}/export", headers=staff("privacy"))

    everything = audit_events(client, support)
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True)
    assert everything[0]["action"] == "device.exported"
    assert [e["action"] for e in audit_events(client, support, action="device.disabled")] == [
        "device.disabled"
    ] * 3
    # Creating the staff keys is audited too (actor "cli"); find the support key's own trace.
    support_actor = next(e["actor"] for e in everything if e["action"] == "device.enabled")
    assert {e["action"] for e in audit_events(client, support, actor=support_actor)} == {
        "device.disabled",
        "device.enabled",
    }
    page = client.get("/v1/admin/audit", query_string={"limit": 2}, headers=support).get_json()
    assert [e["id"] for e in page["items"]] == ids[:2]
    following = client.get(
        "/v1/admin/audit", query_string={"limit": 2, "cursor": page["next_cursor"]}, headers=support
    ).get_json()
    assert [e["id"] for e in following["items"]] == ids[2:4]
    assert audit_events(client, support, target="someone-else") == []


def test_export_device_and_account_hold_everything(
    client: FlaskClient, register: Register, staff: Staff
) -> None:
    account = unique("acct")
    first, first_token = register(account_id=account, push_permission="granted")
    second, _ = register(account_id=account)
    client.put(
        "/v1/devices/me/preferences",
        json={"analytics": True, "policy_version": "2024-05"},
        headers=bearer(first_token),
    )

    response = client.get(f"/v1/admin/devices/{first['id']}/export", headers=staff("privacy"))
    assert response.status_code == 200
    document = response.get_json()
    assert document["device"]["id"] == first["id"]
    assert document["device"]["account_id"] == account
    assert document["preferences"]["analytics"] is True
    assert [(c["purpose"], c["granted"]) for c in document["consents"]] == [
        ("os_push_permission", True),
        ("analytics", True),
    ]

    response = client.get(f"/v1/admin/accounts/{account}/export", headers=staff("privacy"))
    assert response.status_code == 200
    document = response.get_json()
    assert document["account_id"] == account
    assert document["terminated_at"] is None
    assert [d["device"]["id"] for d in document["devices"]] == [first["id"], second["id"]]
    assert document["devices"][0]["consents"][1]["policy_version"] == "2024-05"

    actions = [e["action"] for e in audit_events(client, staff("privacy"))]
    assert actions[:2] == ["account.exported", "device.exported"]


@pytest.mark.parametrize("reason", ["user_request", "child_under_13", "other", None])
def test_device_erasure_leaves_no_trace_but_an_anonymous_audit_event(
    app: Flask, client: FlaskClient, register: Register, staff: Staff, reason: str | None
) -> None:
    account = unique("acct")
    push_token = unique("fcm")
    device, device_token = register(
        account_id=account, push_token=push_token, push_permission="granted"
    )
    client.put("/v1/devices/me/preferences", json={"analytics": True}, headers=bearer(device_token))
    client.post(
        f"/v1/admin/devices/{device['id']}/disable", json={"reason": "r"}, headers=staff("support")
    )
    kept, _ = register(account_id=unique("acct"))

    body = {"reason": reason} if reason else None
    response = client.delete(
        f"/v1/admin/devices/{device['id']}", json=body, headers=staff("privacy")
    )
    assert response.status_code == 204
    assert (
        client.delete(f"/v1/admin/devices/{device['id']}", headers=staff("privacy")).status_code
        == 404
    )
    assert client.get("/v1/devices/me", headers=bearer(device_token)).status_code == 401

    needles = (device["id"], device["installation_id"], account, push_token)
    assert rows_mentioning(app, *needles) == []
    assert rows_mentioning(app, kept["id"]) != []
    (event,) = audit_events(client, staff("privacy"), action="device.erased")
    assert event["target"] == keyed_hash(app.config["SECRET_KEY"], device["id"])
    assert event["details"] == {"reason": reason or "user_request"}
    assert audit_events(client, staff("privacy"), target=device["id"]) != []


def test_erasure_refuses_an_unknown_reason(
    client: FlaskClient, register: Register, staff: Staff
) -> None:
    device, _ = register()
    response = client.delete(
        f"/v1/admin/devices/{device['id']}", json={"reason": "because"}, headers=staff("privacy")
    )
    assert response.status_code == 422
    assert client.get(
        "/v1/admin/devices",
        query_string={"installation_id": device["installation_id"]},
        headers=staff("support"),
    ).get_json()["items"]


def test_account_erasure_removes_every_device_of_the_account(
    app: Flask, client: FlaskClient, register: Register, staff: Staff
) -> None:
    account = unique("acct")
    devices = [register(account_id=account, push_token=unique("fcm"))[0] for _ in range(3)]
    other, _ = register(account_id=unique("acct"))

    response = client.delete(
        f"/v1/admin/accounts/{account}", json={"reason": "child_under_13"}, headers=staff("privacy")
    )
    assert response.status_code == 204
    assert (
        client.delete(f"/v1/admin/accounts/{account}", headers=staff("privacy")).status_code == 404
    )
    needles = [account] + [d[k] for d in devices for k in ("id", "installation_id")]
    assert rows_mentioning(app, *needles) == []
    assert rows_mentioning(app, other["id"]) != []
    (event,) = audit_events(client, staff("privacy"), target=account)
    assert event["action"] == "account.erased"
    assert event["details"] == {"reason": "child_under_13", "devices": 3}


def test_self_service_erasure_is_audited_without_personal_data(
    app: Flask, client: FlaskClient, register: Register, staff: Staff
) -> None:
    device, device_token = register(push_token=unique("fcm"))
    assert client.delete("/v1/devices/me", headers=bearer(device_token)).status_code == 204
    assert rows_mentioning(app, device["id"], device["installation_id"]) == []
    (event,) = audit_events(client, staff("privacy"), action="device.erased")
    assert event["actor"] == "device"
    assert event["target"] == keyed_hash(app.config["SECRET_KEY"], device["id"])


def test_termination_stops_the_account_and_refuses_new_devices(
    client: FlaskClient, register: Register, staff: Staff, app_key: str
) -> None:
    account = unique("acct")
    _, device_token = register(account_id=account)
    disabled, disabled_token = register(account_id=account)
    client.post(
        f"/v1/admin/devices/{disabled['id']}/disable",
        json={"reason": "r"},
        headers=staff("support"),
    )

    response = client.post(f"/v1/admin/accounts/{account}/terminate", headers=staff("privacy"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["account_id"] == account
    assert body["devices"] == 2
    assert body["purge_due_at"] > body["terminated_at"]
    again = client.post(f"/v1/admin/accounts/{account}/terminate", headers=staff("privacy"))
    assert again.get_json()["terminated_at"] == body["terminated_at"]
    assert len(audit_events(client, staff("privacy"), action="account.terminated")) == 1

    delivery = [c for c in consents(client, device_token) if c["purpose"] == "push_delivery"]
    assert [(c["granted"], c["source"]) for c in delivery] == [(False, "system")]
    # Already undeliverable: neither termination nor enabling changes its deliverability.
    client.post(f"/v1/admin/devices/{disabled['id']}/enable", headers=staff("support"))
    assert [c for c in consents(client, disabled_token) if c["source"] == "system"] == []
    assert [
        c["granted"] for c in consents(client, disabled_token) if c["purpose"] == "push_delivery"
    ] == [False]

    refused = client.post(
        "/v1/devices",
        json={
            "installation_id": unique("inst"),
            "platform": "ios",
            "os_version": "17",
            "account_id": account,
        },
        headers=bearer(app_key),
    )
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "account_terminated"
    _, other_token = register()
    moved = client.patch(
        "/v1/devices/me", json={"account_id": account}, headers=bearer(other_token)
    )
    assert moved.status_code == 403
    assert moved.get_json()["error"] == "account_terminated"

    export = client.get(f"/v1/admin/accounts/{account}/export", headers=staff("privacy")).get_json()
    assert datetime.fromisoformat(export["terminated_at"]) == datetime.fromisoformat(
        body["terminated_at"]
    )


def test_admin_endpoints_are_documented(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert "/v1/admin/audit" in spec["paths"]
    assert spec["paths"]["/v1/admin/devices/{device_id}"]["delete"]["summary"]
