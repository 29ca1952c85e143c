"""Campaign v1.1 fields over HTTP: categories, content, rich content, TTL, list and PATCH."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.campaign_fixtures import (
    Made,
    admin,
    app,
    campaign_body,
    create_campaign,
    device,
    fcm,
    fcm_settings,
    marketing,
    post_send,
    send_and_drain,
)
from tests.fakes.fcm_server import FakeFcmServer
from tests.messaging_fixtures import DEALS, put_category, run_passes

__all__ = ["admin", "app", "create_campaign", "device", "fcm", "fcm_settings", "marketing"]

Headers = dict[str, str]
Make = Callable[..., Made]


def test_category_key_decides_the_category(
    client: FlaskClient, marketing: Headers, admin: Headers
) -> None:
    put_category(client, admin, "deals", **DEALS)
    body = campaign_body(category_key="deals")
    del body["category"]
    created = client.post("/v1/campaigns", json=body, headers=marketing)
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["category"] == "promotional"
    assert created.get_json()["category_key"] == "deals"
    # v1 bodies keep working: category alone picks the built-in.
    v1 = client.post("/v1/campaigns", json=campaign_body(), headers=marketing).get_json()
    assert v1["category_key"] == "promotions"
    service = client.post(
        "/v1/campaigns",
        json=campaign_body(category_key="service", category="service"),
        headers=marketing,
    )
    assert service.status_code == 403
    assert service.get_json()["error"] == "service_campaign_requires_admin"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"category_key": "orders"}, "category_not_allowed"),
        ({"category_key": "promotions", "category": "service"}, "category_mismatch"),
        ({"category_key": "nope"}, "unknown_category"),
        ({"category": None}, None),
        ({"image_url": "http://example.com/a.png"}, None),
        ({"local_time": "25:00"}, None),
        ({"fallback_timezone": "Mars/Olympus"}, None),
        ({"send_at": "2030-01-01T09:00:00"}, None),  # no offset
        ({"content": {"not a tag!": {"title": "t", "body": "b"}}}, None),
        ({"content": {"fr": {"title": "t"}}}, None),
    ],
)
def test_bad_campaign_fields_are_refused(
    client: FlaskClient, admin: Headers, changes: dict[str, Any], error: str | None
) -> None:
    put_category(
        client,
        admin,
        "orders",
        name="Orders",
        kind="transactional",
        android_channel_id="orders",
        ios_interruption_level="active",
    )
    body = {k: v for k, v in campaign_body(**changes).items() if v is not None}
    response = client.post("/v1/campaigns", json=body, headers=admin)
    assert response.status_code == 422, response.get_json()
    assert response.get_json().get("error") == error


def test_promotions_get_a_one_day_ttl_unless_set(
    client: FlaskClient, create_campaign: Callable[..., str], marketing: Headers, admin: Headers
) -> None:
    get = lambda cid, h: client.get(f"/v1/campaigns/{cid}", headers=h).get_json()  # noqa: E731
    assert get(create_campaign(), marketing)["ttl_seconds"] == 86400
    assert get(create_campaign(ttl_seconds=600), marketing)["ttl_seconds"] == 600
    assert get(create_campaign(headers=admin, category="service"), admin)["ttl_seconds"] is None


def test_the_message_carries_category_language_and_rich_content(
    app: Flask,
    client: FlaskClient,
    admin: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    put_category(client, admin, "deals", **DEALS)
    indonesian = device(locale="id-ID")
    brazilian = device(locale="pt-BR")
    french = device(locale="fr-FR")
    for made in (indonesian, brazilian, french):
        client.put(
            "/v1/devices/me/preferences",
            json={"categories": {"deals": True}},
            headers={"Authorization": f"Bearer {made.device_token}"},
        )
    campaign_id = create_campaign(
        headers=admin,
        category_key="deals",
        default_locale="en",
        content={
            "id": {"title": "Diskon", "body": "Minggu ini"},
            "pt-PT": {"title": "Desconto PT", "body": "pt"},
            "pt-BR": {"title": "Desconto BR", "body": "br"},
        },
        image_url="https://cdn.example.com/sale.png",
        link="myapp://offers/42",
        sound="chime.caf",
        badge=3,
    )
    preview = client.post(f"/v1/campaigns/{campaign_id}/preview", headers=admin).get_json()
    assert preview["languages"] == {"id": 1, "pt-BR": 1, "en": 1}
    body = send_and_drain(client, app, admin, campaign_id)
    assert body["counts"]["sent"] == 3

    def message(made: Made) -> dict[str, Any]:
        (got,) = fcm.messages_for(made.push_token)
        result: dict[str, Any] = got.body["message"]
        return result

    assert message(indonesian)["notification"]["title"] == "Diskon"  # same language
    assert message(brazilian)["notification"]["title"] == "Desconto BR"  # exact tag
    assert message(french)["notification"]["title"] == "20% off"  # the fallback
    sent = message(indonesian)
    assert sent["android"]["notification"]["channel_id"] == "deals_channel"
    assert sent["android"]["notification"]["sound"] == "chime.caf"
    assert sent["apns"]["payload"]["aps"]["interruption-level"] == "time-sensitive"
    assert sent["apns"]["payload"]["aps"]["badge"] == 3
    assert sent["notification"]["image"] == "https://cdn.example.com/sale.png"
    assert sent["data"]["link"] == "myapp://offers/42"
    # The one-day TTL, less the moments it waited: a remaining TTL.
    assert 86390 <= int(sent["android"]["ttl"].rstrip("s")) <= 86400


def test_campaigns_are_listed_newest_first_with_counts(
    client: FlaskClient, marketing: Headers, create_campaign: Callable[..., str]
) -> None:
    ids = [create_campaign(name=f"c{i}") for i in range(3)]
    client.post(f"/v1/campaigns/{ids[1]}/cancel", headers=marketing)
    first = client.get("/v1/campaigns", query_string={"limit": 2}, headers=marketing).get_json()
    assert [c["id"] for c in first["items"]] == [ids[2], ids[1]]
    assert first["items"][0]["counts"]["targeted"] == 0
    rest = client.get(
        "/v1/campaigns", query_string={"cursor": first["next_cursor"]}, headers=marketing
    ).get_json()
    assert [c["id"] for c in rest["items"]] == [ids[0]]
    assert rest["next_cursor"] is None
    cancelled = client.get(
        "/v1/campaigns", query_string={"status": "cancelled"}, headers=marketing
    ).get_json()
    assert [c["id"] for c in cancelled["items"]] == [ids[1]]
    assert (
        client.get("/v1/campaigns", query_string={"status": "x"}, headers=marketing).status_code
        == 422
    )


def test_patch_edits_drafts_and_scheduled_campaigns_only(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Make,
) -> None:
    device()
    draft = create_campaign()
    patched = client.patch(
        f"/v1/campaigns/{draft}",
        json={"title": "30% off", "link": "myapp://x", "audience": {"platforms": ["ios"]}},
        headers=marketing,
    )
    assert patched.status_code == 200, patched.get_json()
    assert patched.get_json()["title"] == "30% off"
    assert patched.get_json()["data"]["link"] == "myapp://x"

    scheduled = create_campaign(send_at="2099-01-01T09:00:00Z")
    assert post_send(client, marketing, scheduled)["status"] == "scheduled"
    assert (
        client.patch(
            f"/v1/campaigns/{scheduled}", json={"body": "New text"}, headers=marketing
        ).status_code
        == 200
    )
    fixed = client.patch(
        f"/v1/campaigns/{scheduled}", json={"audience": {"platforms": ["ios"]}}, headers=marketing
    )
    assert fixed.status_code == 409
    assert fixed.get_json()["error"] == "campaign_already_scheduled"

    sent = create_campaign()
    post_send(client, marketing, sent)
    run_passes(app)
    assert (
        client.get(f"/v1/campaigns/{sent}", headers=marketing).get_json()["status"] == "completed"
    )
    refused = client.patch(f"/v1/campaigns/{sent}", json={"title": "late"}, headers=marketing)
    assert refused.status_code == 409
    assert refused.get_json()["error"] == "campaign_already_sent"
    assert (
        client.patch("/v1/campaigns/NOPE", json={"title": "x"}, headers=marketing).status_code
        == 404
    )
