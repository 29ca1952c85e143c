"""POST /v1/telemetry/events: validation, consent, idempotency, atomicity; version history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import marshmallow as ma
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import IntegrityError

from mobile_api.extensions import db
from mobile_api.routes.telemetry import TelemetryBatchSchema, TelemetryEventSchema
from mobile_api.services import keys, telemetry
from models import AccountTermination, Device, TelemetryEvent
from tests.conftest import bearer, device_body
from tests.telemetry_fixtures import EVENTS, analytics_device, event, rfc3339

__all__ = ["analytics_device"]

Maker = Callable[..., tuple[dict[str, Any], str]]


def _stored(app: Flask, device_id: str) -> list[TelemetryEvent]:
    with app.app_context():
        rows = db.session.scalars(
            sa.select(TelemetryEvent)
            .where(TelemetryEvent.device_id == device_id)
            .order_by(TelemetryEvent.id)
        ).all()
        db.session.expunge_all()
        return list(rows)


def _export(client: FlaskClient, token: str) -> dict[str, Any]:
    response = client.get("/v1/devices/me/export", headers=bearer(token))
    assert response.status_code == 200
    section: dict[str, Any] = response.get_json()["telemetry"]
    return section


def test_a_batch_is_stored_and_exported(client: FlaskClient, analytics_device: Maker) -> None:
    _, token = analytics_device()
    batch = [event(name="app_open"), event(name="screen_view", properties={"screen": "faq"})]
    batch.append(event(event_id=None, name="ticket.created", properties=None))

    response = client.post(EVENTS, json={"events": batch}, headers=bearer(token))

    assert response.status_code == 202
    assert response.get_json() == {"accepted": 3, "dropped": 0, "reason": None}
    exported = _export(client, token)["events"]
    assert [e["name"] for e in exported] == ["app_open", "screen_view", "ticket.created"]
    assert exported[0]["event_id"] == batch[0]["event_id"]
    assert exported[1]["properties"] == {"screen": "faq"}
    assert exported[2]["event_id"] is None
    assert exported[2]["properties"] == {}
    sent = datetime.fromisoformat(batch[0]["occurred_at"])
    assert datetime.fromisoformat(exported[0]["occurred_at"]) == sent
    assert exported[0]["received_at"].endswith("Z")


def test_occurred_at_in_another_zone_is_stored_as_utc(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device()
    local = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    jakarta = local.astimezone(ZoneInfo("Asia/Jakarta")).isoformat()

    response = client.post(
        EVENTS, json={"events": [event(occurred_at=jakarta)]}, headers=bearer(token)
    )

    assert response.status_code == 202
    (row,) = _stored(app, device["id"])
    assert row.occurred_at == local
    assert _export(client, token)["events"][0]["occurred_at"] == rfc3339(local)


def test_consent_off_stores_nothing_and_says_so(
    app: Flask, client: FlaskClient, register: Maker
) -> None:
    device, token = register()

    response = client.post(
        EVENTS, json={"events": [event(), event(), event()]}, headers=bearer(token)
    )

    assert response.status_code == 202
    assert response.get_json() == {"accepted": 0, "dropped": 3, "reason": "analytics_consent_off"}
    assert _stored(app, device["id"]) == []


def test_consent_withdrawn_stops_storage(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device()
    client.post(EVENTS, json={"events": [event()]}, headers=bearer(token))
    client.put("/v1/devices/me/preferences", json={"analytics": False}, headers=bearer(token))

    response = client.post(EVENTS, json={"events": [event()]}, headers=bearer(token))

    assert response.get_json()["reason"] == "analytics_consent_off"
    assert _stored(app, device["id"]) == []  # the withdrawal erased the first one too


def test_terminated_account_stores_nothing(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device(account_id="acct-terminated-1")
    with app.app_context():
        db.session.add(AccountTermination(account_id="acct-terminated-1"))
        db.session.commit()

    response = client.post(EVENTS, json={"events": [event(), event()]}, headers=bearer(token))

    assert response.status_code == 202
    assert response.get_json() == {"accepted": 0, "dropped": 2, "reason": "account_terminated"}
    assert _stored(app, device["id"]) == []


def test_a_retried_batch_is_stored_once_and_answered_alike(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device()
    batch = {"events": [event(), event(), event()]}

    first = client.post(EVENTS, json=batch, headers=bearer(token))
    retry = client.post(EVENTS, json=batch, headers=bearer(token))

    assert first.status_code == retry.status_code == 202
    assert first.get_json() == retry.get_json() == {"accepted": 3, "dropped": 0, "reason": None}
    assert len(_stored(app, device["id"])) == 3


def test_a_partly_stored_batch_stores_only_the_new_events(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device()
    old = event(name="first_try")
    client.post(EVENTS, json={"events": [old]}, headers=bearer(token))

    response = client.post(
        EVENTS, json={"events": [old, event(name="new_one")]}, headers=bearer(token)
    )

    assert response.get_json() == {"accepted": 2, "dropped": 0, "reason": None}
    assert [row.name for row in _stored(app, device["id"])] == ["first_try", "new_one"]


def test_a_repeated_id_inside_one_batch_is_stored_once(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device()
    twice = event()

    response = client.post(EVENTS, json={"events": [twice, dict(twice)]}, headers=bearer(token))

    assert response.status_code == 202
    assert len(_stored(app, device["id"])) == 1


def test_events_without_id_are_each_stored(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device()
    anonymous = event(event_id=None)

    for _ in range(2):
        client.post(EVENTS, json={"events": [anonymous]}, headers=bearer(token))

    assert len(_stored(app, device["id"])) == 2


def test_event_ids_are_per_device(app: Flask, client: FlaskClient, analytics_device: Maker) -> None:
    one, token_one = analytics_device()
    two, token_two = analytics_device()
    shared = event(event_id="same-id-on-two-devices")

    for token in (token_one, token_two):
        response = client.post(EVENTS, json={"events": [shared]}, headers=bearer(token))
        assert response.get_json()["accepted"] == 1

    assert len(_stored(app, one["id"])) == len(_stored(app, two["id"])) == 1


def _now_minus(**delta: float) -> str:
    return rfc3339(datetime.now(UTC) - timedelta(**delta))


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "1starts_with_digit"}, "name"),
        ({"name": "n" * 65}, "name"),
        ({"name": 7}, "name"),
        ({"event_id": "e" * 65}, "event_id"),
        ({"event_id": 5}, "event_id"),
        ({"event_id": "line\nbreak"}, "event_id"),
        ({"occurred_at": None}, "occurred_at"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "2026-01-01T10:00:00"}, "occurred_at"),  # no zone
        ({"occurred_at": _now_minus(hours=-25)}, "occurred_at"),
        ({"occurred_at": _now_minus(days=31)}, "occurred_at"),
        ({"properties": {"nested": {"a": 1}}}, "properties"),
        ({"properties": {"list": [1, 2]}}, "properties"),
        ({"properties": {f"k{i}": i for i in range(21)}}, "properties"),
        ({"properties": {"big": "x" * 4100}}, "properties"),
        ({"properties": {"bad key": 1}}, "properties"),
        ({"properties": {"9lives": 1}}, "properties"),
        ({"properties": "flat?"}, "properties"),
        ({"user_email": "someone@example.com"}, "user_email"),
    ],
)
def test_an_invalid_event_refuses_the_whole_batch(
    app: Flask, client: FlaskClient, analytics_device: Maker, bad: dict[str, Any], field: str
) -> None:
    device, token = analytics_device()
    batch = [event(), event(), event(), event(**bad), event()]

    response = client.post(EVENTS, json={"events": batch}, headers=bearer(token))

    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == 422
    assert list(body["errors"]["json"]["events"]) == ["3"]
    assert field in body["errors"]["json"]["events"]["3"]
    assert _stored(app, device["id"]) == []


@pytest.mark.parametrize("field", ["event_id", "properties", "name"])
def test_null_is_not_a_value(client: FlaskClient, analytics_device: Maker, field: str) -> None:
    _, token = analytics_device()
    bad = event()
    bad[field] = None

    response = client.post(EVENTS, json={"events": [bad]}, headers=bearer(token))

    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]["events"]["0"]


def test_an_event_that_is_not_an_object_refuses_the_batch(
    client: FlaskClient, analytics_device: Maker
) -> None:
    _, token = analytics_device()

    response = client.post(EVENTS, json={"events": [event(), "app_open"]}, headers=bearer(token))

    assert response.status_code == 422
    assert "1" in response.get_json()["errors"]["json"]["events"]


def test_the_fast_path_loads_what_the_schema_loads(app: Flask) -> None:
    batch = {
        "events": [
            event(),
            event(event_id=None, properties=None),
            event(occurred_at="2026-11-24T08:15:00.5+07:00", properties={"a": None, "b": 1.5}),
        ]
    }
    batch["events"][2]["occurred_at"] = _now_minus(hours=1).replace("Z", "+07:00")

    class PlainBatch(ma.Schema):
        events = ma.fields.List(ma.fields.Nested(TelemetryEventSchema), required=True)

    assert TelemetryBatchSchema().load(batch) == PlainBatch().load(batch)


def test_edge_values_are_accepted(client: FlaskClient, analytics_device: Maker) -> None:
    _, token = analytics_device()
    edge = event(
        event_id="e" * 64,
        name="n" * 64,
        occurred_at=_now_minus(days=29, hours=23),
        properties={f"k{i}": None if i % 2 else 1.5 for i in range(20)},
    )
    ahead = event(occurred_at=_now_minus(hours=-23))

    response = client.post(EVENTS, json={"events": [edge, ahead]}, headers=bearer(token))

    assert response.status_code == 202, response.get_json()


def test_non_finite_numbers_are_refused(client: FlaskClient, analytics_device: Maker) -> None:
    _, token = analytics_device()
    when = _now_minus(minutes=1)
    body = f'{{"events": [{{"name": "x", "occurred_at": "{when}", "properties": {{"v": NaN}}}}]}}'

    response = client.post(
        EVENTS, data=body, content_type="application/json", headers=bearer(token)
    )

    assert response.status_code == 422
    assert "properties" in response.get_json()["errors"]["json"]["events"]["0"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": []}, "events"),
        ({"events": [event() for _ in range(101)]}, "events"),
        ({}, "events"),
        ({"events": [event()], "device_id": "x"}, "device_id"),
        ({"events": {"0": event()}}, "events"),
    ],
)
def test_batch_shape_is_validated(
    client: FlaskClient, analytics_device: Maker, body: dict[str, Any], field: str
) -> None:
    _, token = analytics_device()

    response = client.post(EVENTS, json=body, headers=bearer(token))

    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]


def test_a_full_batch_of_100_is_accepted(client: FlaskClient, analytics_device: Maker) -> None:
    _, token = analytics_device()

    response = client.post(
        EVENTS, json={"events": [event() for _ in range(100)]}, headers=bearer(token)
    )

    assert response.get_json() == {"accepted": 100, "dropped": 0, "reason": None}


def test_only_device_tokens_may_send(client: FlaskClient, make_key: Callable[[str], str]) -> None:
    body = {"events": [event()]}
    assert client.post(EVENTS, json=body).status_code == 401
    assert client.post(EVENTS, json=body, headers=bearer("dt_unknown")).status_code == 401
    forbidden = client.post(EVENTS, json=body, headers=bearer(make_key("marketing")))
    assert forbidden.status_code == 403
    assert forbidden.get_json()["error"] == "forbidden"


def test_sending_is_rate_limited_per_device(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(RATELIMIT_DEVICE="2 per minute")
    client = app.test_client()
    with app.app_context():
        _, app_secret = keys.create(db.session, "app", "rate test")
    tokens = []
    for _ in range(2):
        registered = client.post("/v1/devices", json=device_body(), headers=bearer(app_secret))
        tokens.append(registered.get_json()["device_token"])

    codes = [
        client.post(EVENTS, json={"events": [event()]}, headers=bearer(tokens[0])).status_code
        for _ in range(3)
    ]
    other = client.post(EVENTS, json={"events": [event()]}, headers=bearer(tokens[1]))

    assert codes == [202, 202, 429]
    assert other.status_code == 202


def test_erasing_the_device_erases_its_events(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device()
    client.post(EVENTS, json={"events": [event(), event()]}, headers=bearer(token))
    client.patch("/v1/devices/me", json={"os_version": "15"}, headers=bearer(token))

    assert client.delete("/v1/devices/me", headers=bearer(token)).status_code == 204

    assert _stored(app, device["id"]) == []
    with app.app_context():
        assert telemetry.export_section(db.session, device["id"]) == {
            "events": [],
            "version_history": [],
        }


def test_a_failed_insert_stores_nothing_and_leaves_the_session_usable(
    app: Flask, client: FlaskClient, analytics_device: Maker
) -> None:
    device, _ = analytics_device()
    with app.app_context():
        stale = db.session.get(Device, device["id"])
        assert stale is not None
        db.session.expunge(stale)
        db.session.execute(sa.delete(Device).where(Device.id == device["id"]))
        db.session.commit()
        rows = [{"name": "app_open", "occurred_at": datetime.now(UTC)} for _ in range(3)]

        with pytest.raises(IntegrityError):
            telemetry.ingest(db.session, stale, rows)

        assert db.session.scalar(sa.select(sa.func.count()).select_from(TelemetryEvent)) == 0


# Version history -----------------------------------------------------------


def _history(client: FlaskClient, token: str) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = _export(client, token)["version_history"]
    return history


def test_check_ins_record_version_changes_only(
    client: FlaskClient, analytics_device: Maker
) -> None:
    device, token = analytics_device(os_version="13", app_version="5.1.0")
    assert _history(client, token) == []  # registration records nothing

    def check_in(**fields: Any) -> dict[str, Any]:
        response = client.patch("/v1/devices/me", json=fields, headers=bearer(token))
        assert response.status_code == 200
        body: dict[str, Any] = response.get_json()
        return body

    check_in(os_version="13", app_version="5.1.0", locale="id-ID")  # nothing changed
    updated = check_in(os_version="14")
    check_in(app_version="5.2.0")
    check_in(app_version=None)  # cleared: not an upgrade

    assert updated["os_version"] == "14"
    history = _history(client, token)
    assert [(h["field"], h["old_value"], h["new_value"]) for h in history] == [
        ("os_version", "13", "14"),
        ("app_version", "5.1.0", "5.2.0"),
    ]
    assert all(h["changed_at"].endswith("Z") for h in history)
    assert device["id"] not in str(history)


def test_re_registration_records_version_changes(
    client: FlaskClient, app_key: str, analytics_device: Maker
) -> None:
    device, token = analytics_device(app_version="5.1.0")
    body = device_body(installation_id=device["installation_id"], app_version="5.3.0")

    response = client.post(
        "/v1/devices", json=body, headers={**bearer(app_key), "X-Device-Token": token}
    )

    assert response.status_code == 200
    new_token = response.get_json()["device_token"]
    assert [(h["old_value"], h["new_value"]) for h in _history(client, new_token)] == [
        ("5.1.0", "5.3.0")
    ]
