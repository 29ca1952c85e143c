"""Staff flows across features, checked on the wire: support, campaigns, audit, export."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.campaign_fixtures import (  # noqa: F401 - fixtures
    admin,
    app,
    create_campaign,
    device,
    fcm,
    fcm_settings,
    marketing,
    send_and_drain,
)
from tests.conftest import bearer
from tests.fakes.fcm_server import FakeFcmServer

Headers = dict[str, str]


def test_disable_and_enable_through_support_gate_every_push_category(
    app: Flask,  # noqa: F811
    client: FlaskClient,
    admin: Headers,  # noqa: F811
    make_key: Callable[[str], str],
    create_campaign: Callable[..., str],  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
    fcm: FakeFcmServer,  # noqa: F811
) -> None:
    support = bearer(make_key("support"))
    made = device()
    disabled = client.post(
        f"/v1/admin/devices/{made.id}/disable",
        json={"reason": "abuse report", "ticket": "T-1"},
        headers=support,
    )
    assert disabled.status_code == 200, disabled.get_json()

    service = create_campaign(headers=admin, category="service", audience={"device_ids": [made.id]})
    body = send_and_drain(client, app, admin, service)
    assert body["counts"]["suppressed"] == {"disabled": 1}
    assert fcm.received == []

    assert client.post(f"/v1/admin/devices/{made.id}/enable", headers=support).status_code == 200
    again = create_campaign(headers=admin, category="service", audience={"device_ids": [made.id]})
    assert send_and_drain(client, app, admin, again)["counts"]["sent"] == 1
    assert [m.token for m in fcm.received] == [made.push_token]


def test_campaign_actions_are_in_the_audit_trail_and_deliveries_in_the_export(
    app: Flask,  # noqa: F811
    client: FlaskClient,
    marketing: Headers,  # noqa: F811
    make_key: Callable[[str], str],
    create_campaign: Callable[..., str],  # noqa: F811
    device: Callable[..., Any],  # noqa: F811
) -> None:
    made = device()
    campaign_id = create_campaign()
    assert send_and_drain(client, app, marketing, campaign_id)["counts"]["sent"] == 1

    privacy = bearer(make_key("privacy"))
    trail = client.get(
        "/v1/admin/audit", query_string={"target": campaign_id}, headers=privacy
    ).get_json()["items"]
    assert [event["action"] for event in trail] == ["campaign.send", "campaign.create"]
    assert all(event["actor"].startswith("key:") for event in trail)
    assert all(event["request_id"] for event in trail)

    export = client.get(f"/v1/admin/devices/{made.id}/export", headers=privacy).get_json()
    assert [(d["campaign_id"], d["status"]) for d in export["deliveries"]] == [
        (campaign_id, "sent")
    ]
    own = client.get("/v1/devices/me/export", headers=bearer(made.device_token)).get_json()
    assert own["deliveries"] == export["deliveries"]

    # A cancel is in the trail too, and so are the CLI's key changes.
    cancelled = create_campaign()
    assert client.post(f"/v1/campaigns/{cancelled}/send", headers=marketing).status_code == 202
    assert client.post(f"/v1/campaigns/{cancelled}/cancel", headers=marketing).status_code == 200
    actions = client.get(
        "/v1/admin/audit", query_string={"target": cancelled}, headers=privacy
    ).get_json()["items"]
    assert [event["action"] for event in actions] == [
        "campaign.cancel",
        "campaign.send",
        "campaign.create",
    ]
    keys = client.get(
        "/v1/admin/audit", query_string={"action": "key.created"}, headers=privacy
    ).get_json()["items"]
    assert {event["actor"] for event in keys} == {"cli"} and len(keys) >= 2
