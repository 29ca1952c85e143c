"""Campaigns API: create, preview, send, cancel, counts, deliveries, explain."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.extensions import db
from mobile_api.services import dispatch
from models import Delivery, DeliveryStatus, utcnow
from tests.campaign_fixtures import (
    Made,
    Sent,
    admin,
    app,
    assert_balanced,
    assert_counts_match_rows,
    campaign_body,
    create_campaign,
    device,
    drain,
    fcm,
    fcm_settings,
    marketing,
    send_and_drain,
    sent_campaign,
    terminate_account,
    update_device,
)
from tests.conftest import bearer, device_body

__all__ = [
    "admin",
    "app",
    "create_campaign",
    "device",
    "fcm",
    "fcm_settings",
    "marketing",
    "sent_campaign",
]

Headers = dict[str, str]
Send = Callable[..., Sent]


def test_create_returns_a_draft(client: FlaskClient, marketing: Headers) -> None:
    body = campaign_body(
        audience={"platforms": ["ios"], "min_os_version": "10.0", "locales": ["id"]},
        ttl_seconds=3600,
        collapse_key="sale",
        priority="high",
    )
    response = client.post("/v1/campaigns", json=body, headers=marketing)
    assert response.status_code == 201
    campaign = response.get_json()
    assert campaign["status"] == "draft"
    assert campaign["audience"] == body["audience"]
    assert campaign["priority"] == "high"
    assert campaign["counts"] == {
        "targeted": 0,
        "sent": 0,
        "failed": 0,
        "suppressed": {},
        "pending": 0,
        "invalid_tokens_pruned": 0,
    }
    fetched = client.get(f"/v1/campaigns/{campaign['id']}", headers=marketing)
    assert fetched.get_json() == campaign


def test_service_campaigns_need_admin(
    client: FlaskClient, marketing: Headers, admin: Headers
) -> None:
    refused = client.post(
        "/v1/campaigns", json=campaign_body(category="service"), headers=marketing
    )
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "service_campaign_requires_admin"
    created = client.post("/v1/campaigns", json=campaign_body(category="service"), headers=admin)
    assert created.status_code == 201
    campaign_id = created.get_json()["id"]
    send = client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing)
    assert send.status_code == 403
    assert send.get_json()["error"] == "service_campaign_requires_admin"


CAMPAIGN_ENDPOINTS = [
    ("post", "/v1/campaigns"),
    ("get", "/v1/campaigns/{id}"),
    ("post", "/v1/campaigns/{id}/preview"),
    ("post", "/v1/campaigns/{id}/send"),
    ("post", "/v1/campaigns/{id}/cancel"),
    ("get", "/v1/campaigns/{id}/deliveries"),
    ("get", "/v1/campaigns/{id}/explain/{device}"),
]


@pytest.mark.parametrize(("method", "path"), CAMPAIGN_ENDPOINTS)
def test_every_campaign_endpoint_refuses_other_roles_alike_for_real_and_unknown_ids(
    client: FlaskClient,
    make_key: Callable[[str], str],
    create_campaign: Callable[..., str],
    method: str,
    path: str,
) -> None:
    registered = client.post(
        "/v1/devices", json=device_body(), headers=bearer(make_key("app"))
    ).get_json()
    real = path.format(id=create_campaign(), device=registered["device"]["id"])
    unknown = path.format(id="NOPE", device="NOPE")
    for url in (real, unknown):  # the answer never tells whether the campaign exists
        for role in ("app", "support", "privacy"):
            response = getattr(client, method)(
                url, json=campaign_body(), headers=bearer(make_key(role))
            )
            assert response.status_code == 403, (role, url)
            assert response.get_json()["error"] == "forbidden"
        device_token = bearer(registered["device_token"])
        assert (
            getattr(client, method)(url, json=campaign_body(), headers=device_token).status_code
            == 403
        )
        assert getattr(client, method)(url, json=campaign_body()).status_code == 401


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"surprise": 1}, "surprise"),
        ({"category": "spam"}, "category"),
        ({"data": {"google.x": "1"}}, "data"),
        ({"data": {"k": "v" * 1024, "l": "w" * 1024, "m": "x" * 1024, "n": "y" * 1024}}, "data"),
        ({"audience": {"platforms": []}}, "audience"),
        ({"audience": {"platforms": ["windows"]}}, "audience"),
        ({"audience": {"min_os_version": "ten"}}, "audience"),
        ({"audience": {"colour": "red"}}, "audience"),
        ({"priority": "urgent"}, "priority"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"title": "line\nbreak"}, "title"),
    ],
)
def test_invalid_bodies_are_refused(
    client: FlaskClient, marketing: Headers, overrides: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/campaigns", json=campaign_body(**overrides), headers=marketing)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]


def test_unknown_campaign_is_404(client: FlaskClient, marketing: Headers) -> None:
    for method, path in [
        ("get", "/v1/campaigns/NOPE"),
        ("post", "/v1/campaigns/NOPE/send"),
        ("post", "/v1/campaigns/NOPE/cancel"),
        ("post", "/v1/campaigns/NOPE/preview"),
        ("get", "/v1/campaigns/NOPE/deliveries"),
        ("get", "/v1/campaigns/NOPE/explain/X"),
    ]:
        response = getattr(client, method)(path, headers=marketing)
        assert response.status_code == 404, path
        assert response.get_json()["error"] == "not_found"
        assert response.get_json()["message"] == "No such campaign.", path


def test_preview_counts_exclusions_by_reason(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    admin: Headers,
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
) -> None:
    device()
    device()
    device(promotional=False)
    device(push_permission="denied")
    disabled = device().id
    update_device(app, disabled, disabled_at=utcnow())
    device(push_token=None)
    invalid = device().id
    update_device(app, invalid, push_token_invalid_at=utcnow())
    device(account_id="acct-gone")
    terminate_account(app, "acct-gone")
    device(platform="ios")  # filtered out by the audience

    campaign_id = create_campaign(audience={"platforms": ["android"]})
    response = client.post(f"/v1/campaigns/{campaign_id}/preview", headers=marketing)
    assert response.status_code == 200
    assert response.get_json() == {
        "eligible": 2,
        "excluded": {
            "promotional_opt_out": 1,
            "push_permission_denied": 1,
            "disabled": 1,
            "no_push_token": 1,
            "invalid_push_token": 1,
            "account_terminated": 1,
            "category_opt_out": 0,
            "frequency_capped": 0,
        },
        "languages": {"fallback": 2},
    }
    # A service announcement needs no opt-in: the opted-out device is eligible.
    service_id = create_campaign(
        headers=admin, category="service", audience={"platforms": ["android"]}
    )
    service = client.post(f"/v1/campaigns/{service_id}/preview", headers=marketing).get_json()
    assert service["eligible"] == 3
    assert service["excluded"]["promotional_opt_out"] == 0
    # Nothing was sent and the campaign is still a draft.
    assert (
        client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["status"]
        == "draft"
    )


def test_min_os_version_compares_as_versions(
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
) -> None:
    for version in ("9.3", "9", "10", "10.0", "10.0.1", "17.4.1", "100", "9.10-beta", "beta"):
        device(os_version=version)
    campaign_id = create_campaign(audience={"min_os_version": "10.0"})
    preview = client.post(f"/v1/campaigns/{campaign_id}/preview", headers=marketing).get_json()
    assert preview["eligible"] == 5  # 10, 10.0, 10.0.1, 17.4.1, 100
    campaign_id = create_campaign(audience={"min_os_version": "9.4"})
    preview = client.post(f"/v1/campaigns/{campaign_id}/preview", headers=marketing).get_json()
    assert preview["eligible"] == 6  # and 9.10-beta


def test_audience_filters_combine(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
) -> None:
    match = device(app_version="5.2", locale="id-ID", account_id="a1").id
    device(app_version="5.1", locale="id-ID", account_id="a1")
    device(app_version="5.2", locale="en-US", account_id="a1")
    device(app_version="5.2", locale="id-ID", account_id="a2")
    stale = device(app_version="5.2", locale="id", account_id="a1").id
    update_device(app, stale, last_seen_at=utcnow() - timedelta(days=40))
    audience = {
        "app_versions": ["5.2"],
        "locales": ["id"],
        "account_ids": ["a1"],
        "last_seen_within_days": 30,
    }
    campaign_id = create_campaign(audience=audience)
    preview = client.post(f"/v1/campaigns/{campaign_id}/preview", headers=marketing).get_json()
    assert preview["eligible"] == 1
    test_send = create_campaign(audience={"device_ids": [match]})
    preview = client.post(f"/v1/campaigns/{test_send}/preview", headers=marketing).get_json()
    assert preview["eligible"] == 1


def test_send_twice_is_refused(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
) -> None:
    device()
    campaign_id = create_campaign()
    first = client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing)
    assert first.status_code == 202
    assert first.get_json()["status"] == "queued"
    again = client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing)
    assert again.status_code == 409
    assert again.get_json()["error"] == "campaign_already_sent"


def test_cancel_before_dispatch_sends_nothing(
    app: Flask, client: FlaskClient, marketing: Headers, sent_campaign: Send, fcm: Any
) -> None:
    campaign_id = sent_campaign(devices=1).id
    cancelled = client.post(f"/v1/campaigns/{campaign_id}/cancel", headers=marketing)
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    again = client.post(f"/v1/campaigns/{campaign_id}/cancel", headers=marketing)
    assert again.status_code == 200
    drain(app)
    assert fcm.received == []
    assert client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing).status_code == 409


def test_deliveries_of_one_campaign_page_in_order_beside_another(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
) -> None:
    """Without a status filter, pages hold this campaign's rows only, in targeting order."""
    for _ in range(5):
        device()
    first, second = create_campaign(), create_campaign()
    send_and_drain(client, app, marketing, first)
    send_and_drain(client, app, marketing, second)

    def all_pages(campaign_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        url = f"/v1/campaigns/{campaign_id}/deliveries?limit=2"
        while True:
            page = client.get(url, headers=marketing).get_json()
            items += page["items"]
            if page["next_cursor"] is None:
                return items
            url = f"/v1/campaigns/{campaign_id}/deliveries?limit=2&cursor={page['next_cursor']}"

    with app.app_context():
        expected = {
            campaign_id: list(
                db.session.scalars(
                    sa.select(Delivery.device_id)
                    .where(Delivery.campaign_id == campaign_id)
                    .order_by(Delivery.id)
                )
            )
            for campaign_id in (first, second)
        }
    for campaign_id in (first, second):
        devices = [item["device_id"] for item in all_pages(campaign_id)]
        assert len(devices) == 5
        assert devices == expected[campaign_id]


def test_deliveries_and_explain(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
) -> None:
    sent_ids = [device().id for _ in range(3)]
    opted_out = device(promotional=False).id
    ios = device(platform="ios").id
    campaign_id = create_campaign(audience={"platforms": ["android"]})
    draft = client.get(f"/v1/campaigns/{campaign_id}/explain/{sent_ids[0]}", headers=marketing)
    assert draft.get_json()["explanation"] == "The campaign has not been sent yet."

    body = send_and_drain(client, app, marketing, campaign_id)
    assert body["status"] == "completed"
    assert body["counts"]["sent"] == 3
    assert body["counts"]["suppressed"] == {"promotional_opt_out": 1}
    assert_balanced(body["counts"])

    page = client.get(
        f"/v1/campaigns/{campaign_id}/deliveries?status=sent&limit=2", headers=marketing
    ).get_json()
    assert len(page["items"]) == 2
    rest = client.get(
        f"/v1/campaigns/{campaign_id}/deliveries?status=sent&cursor={page['next_cursor']}",
        headers=marketing,
    ).get_json()
    assert rest["next_cursor"] is None
    assert sorted(i["device_id"] for i in page["items"] + rest["items"]) == sorted(sent_ids)
    suppressed = client.get(
        f"/v1/campaigns/{campaign_id}/deliveries?status=suppressed", headers=marketing
    ).get_json()["items"]
    assert [(i["device_id"], i["reason"]) for i in suppressed] == [
        (opted_out, "promotional_opt_out")
    ]
    bad = client.get(f"/v1/campaigns/{campaign_id}/deliveries?status=lost", headers=marketing)
    assert bad.status_code == 422

    explained = client.get(
        f"/v1/campaigns/{campaign_id}/explain/{opted_out}", headers=marketing
    ).get_json()
    assert explained["status"] == "suppressed"
    assert explained["delivery"]["reason"] == "promotional_opt_out"
    assert explained["exclusion_now"] == "promotional_opt_out"
    assert explained["explanation"] == "Not sent: promotional_opt_out."
    sent = client.get(
        f"/v1/campaigns/{campaign_id}/explain/{sent_ids[1]}", headers=marketing
    ).get_json()
    assert (sent["status"], sent["deliverable_now"]) == ("sent", True)
    other = client.get(f"/v1/campaigns/{campaign_id}/explain/{ios}", headers=marketing).get_json()
    assert other["targeted"] is False
    assert other["unmatched_filters"] == ["platforms"]
    assert "platforms" in other["explanation"]
    missing = client.get(f"/v1/campaigns/{campaign_id}/explain/NOPE", headers=marketing)
    assert missing.status_code == 404
    # A completed campaign cannot be cancelled.
    late = client.post(f"/v1/campaigns/{campaign_id}/cancel", headers=marketing)
    assert late.status_code == 409
    assert late.get_json()["error"] == "campaign_finished"


def _purge(app: Flask) -> None:
    """Run the privacy purge, which deletes the delivery rows past their retention."""
    result = app.test_cli_runner().invoke(args=["privacy", "purge"])
    assert result.exit_code == 0, result.output


def _past_retention(app: Flask) -> datetime:
    """A moment a day before the delivery retention began."""
    return utcnow() - timedelta(days=app.config["DELIVERY_RETENTION_DAYS"] + 1)


def _purge_after_delivery_retention(app: Flask) -> None:
    """Age every delivery row a day past its retention, then run the purge."""
    with app.app_context():
        db.session.execute(sa.update(Delivery).values(updated_at=_past_retention(app)))
        db.session.commit()
        db.session.remove()
    _purge(app)


def _deliveries(client: FlaskClient, headers: Headers, campaign_id: str) -> list[Any]:
    response = client.get(f"/v1/campaigns/{campaign_id}/deliveries", headers=headers)
    assert response.status_code == 200
    items: list[Any] = response.get_json()["items"]
    return items


def test_counts_outlive_erasure_and_delivery_retention(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
) -> None:
    sent = [device() for _ in range(3)]
    device(prefix="unreg-")  # FCM answers UNREGISTERED: failed, token pruned
    device(promotional=False)
    campaign_id = create_campaign()
    body = send_and_drain(client, app, marketing, campaign_id)
    assert body["status"] == "completed"
    expected = {
        "targeted": 5,
        "sent": 3,
        "failed": 1,
        "pending": 0,
        "invalid_tokens_pruned": 1,
        "suppressed": {"promotional_opt_out": 1},
    }
    assert body["counts"] == expected

    # An erased device's row stays, naming no one: the totals do not move.
    assert client.delete("/v1/devices/me", headers=bearer(sent[0].device_token)).status_code == 204
    rows = _deliveries(client, marketing, campaign_id)
    assert len(rows) == 5
    assert [row["device_id"] for row in rows].count(None) == 1
    assert (
        client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
        == expected
    )

    _purge_after_delivery_retention(app)
    assert _deliveries(client, marketing, campaign_id) == []  # lists only what is retained
    after = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert (after["status"], after["counts"]) == ("completed", expected)
    assert_balanced(after["counts"])


def test_rows_of_a_campaign_still_sending_deleted_by_retention_leave_its_counts_true(
    app: Flask, client: FlaskClient, marketing: Headers, sent_campaign: Send
) -> None:
    """Counts follow the rows the purge deletes, so nothing stays pending forever."""
    campaign_id = sent_campaign(devices=5, chunk_size=2).id
    settings = dispatch.Settings.from_config(app.config)
    with app.app_context():
        dispatch.enumerate_batch(db.session, campaign_id, settings)
        dispatch.process_chunk(db.session, dispatch.transport(app), campaign_id, settings)
        last_two = sa.select(Delivery.id).order_by(Delivery.id.desc()).limit(2).scalar_subquery()
        db.session.execute(
            sa.update(Delivery)
            .where(Delivery.status == DeliveryStatus.PENDING, Delivery.id.in_(last_two))
            .values(updated_at=_past_retention(app))
        )
        db.session.commit()
        db.session.remove()
    _purge(app)
    assert assert_counts_match_rows(app, campaign_id)["pending"] == 1
    drain(app)
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert body["status"] == "completed"
    assert (body["counts"]["sent"], body["counts"]["pending"]) == (3, 0)
    assert_counts_match_rows(app, campaign_id)


class _CancelMidHandOff:
    """The real transport; the campaign is cancelled while the first chunk is in flight."""

    def __init__(self, inner: Any, cancel: Callable[[], None], crash: bool = False) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = inner.max_batch
        self._cancel: Callable[[], None] | None = cancel
        self._crash = crash

    def send(self, messages: list[Any]) -> list[Any]:
        if self._cancel is not None:
            self._cancel()
            self._cancel = None
            if self._crash:
                raise RuntimeError("the dispatcher dies mid-hand-off")
        results: list[Any] = self.inner.send(messages)
        return results

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(
    ("crash", "expected"),
    [
        (False, {"sent": 3, "failed": 0, "suppressed": {"cancelled": 7}}),
        # The claim lapses: the chunk is failed as interrupted, never re-sent.
        (True, {"sent": 0, "failed": 3, "suppressed": {"cancelled": 7}}),
    ],
)
def test_a_cancelled_campaign_keeps_its_counts_once_its_chunk_in_flight_is_decided(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    crash: bool,
    expected: dict[str, Any],
) -> None:
    campaign_id = sent_campaign(devices=10, chunk_size=3).id
    in_flight: list[dict[str, Any]] = []

    def cancel() -> None:
        response = client.post(f"/v1/campaigns/{campaign_id}/cancel", headers=marketing)
        in_flight.append(response.get_json()["counts"])

    app.extensions["push_transport"] = _CancelMidHandOff(dispatch.transport(app), cancel, crash)
    drain(app)
    assert in_flight[0]["pending"] == 3  # being handed over when the cancel came
    if crash:
        app.config["DISPATCH_CLAIM_LEASE_SECONDS"] = 0.0
        drain(app)

    _purge_after_delivery_retention(app)
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert body["status"] == "cancelled"
    counts = body["counts"]
    assert {key: counts[key] for key in expected} == expected
    assert counts["targeted"] == 10
    assert_balanced(counts)
