"""Transactional notifications: roles, idempotency, consent at hand-off, on the wire."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from mobile_api.extensions import db
from mobile_api.services import categories, keys
from mobile_api.services import notifications as notification_service
from mobile_api.services.caller import Caller
from mobile_api.worker import Worker
from models import IdempotencyKey, Notification, new_id, utcnow
from tests.campaign_fixtures import (
    Made,
    admin,
    app,
    campaign_body,
    close_transport,
    device,
    dispatcher_app,
    drain,
    fcm,
    fcm_settings,
    marketing,
    terminate_account,
    update_device,
)
from tests.conftest import bearer, device_body, make_app, migrate_once, wipe
from tests.fakes.fcm_server import FakeFcmServer
from tests.notification_fixtures import (
    TICKET_REPLY,
    TRANSACTIONAL,
    LiveServer,
    idempotency_key,
    live_server,
    notification_body,
    notification_status,
    notify,
    post_notification,
    put_category,
    ticket_reply,
)

__all__ = ["admin", "app", "device", "fcm", "fcm_settings", "marketing", "notify"]
__all__ += ["dispatcher_app", "live_server", "post_notification", "ticket_reply"]

Headers = dict[str, str]
Post = Callable[..., TestResponse]
Make = Callable[..., Made]


def _tokens(fcm: FakeFcmServer) -> collections.Counter[str]:
    return collections.Counter(m.token for m in fcm.received)


def test_an_accounts_devices_get_the_notification_with_its_outcomes(
    app: Flask,
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    phone = device(promotional=False, account_id="acct-1")
    tablet = device(promotional=False, account_id="acct-1")
    device(promotional=False, account_id="acct-2")
    response = post_notification(
        notify,
        notification_body(link="helpdesk://tickets/42", collapse_key="ticket-42", ttl_seconds=600),
    )
    assert response.status_code == 202, response.get_json()
    accepted = response.get_json()
    assert accepted["status"] == "queued" and accepted["devices"] == 2
    assert set(accepted) == {"id", "status", "devices"}

    drain(app)
    assert _tokens(fcm) == {phone.push_token: 1, tablet.push_token: 1}
    message = fcm.received[0].body["message"]
    assert message["notification"] == {
        "title": "An agent answered",
        "body": "Ticket #42 has a new reply.",
    }
    assert message["data"] == {"ticket": "42", "link": "helpdesk://tickets/42"}
    assert message["android"]["collapse_key"] == "ticket-42"
    assert message["android"]["ttl"] == "600s"

    got = notification_status(client, notify, accepted["id"])
    assert got["status"] == "completed"
    assert got["counts"]["sent"] == 2 and got["counts"]["pending"] == 0
    assert {(d["device_id"], d["status"]) for d in got["deliveries"]} == {
        (phone.id, "sent"),
        (tablet.id, "sent"),
    }


def test_undeliverable_devices_are_suppressed_with_their_reason(
    app: Flask,
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    ok = device(promotional=False)
    disabled = device(promotional=False)
    denied = device(promotional=False, push_permission="denied")
    terminated = device(promotional=False, account_id="gone")
    update_device(app, disabled.id, disabled_at=utcnow())
    terminate_account(app, "gone")
    ids = [ok.id, disabled.id, denied.id, terminated.id]
    response = post_notification(notify, notification_body(device_ids=ids))
    assert response.get_json()["devices"] == 4
    drain(app)
    assert _tokens(fcm) == {ok.push_token: 1}
    got = notification_status(client, notify, response.get_json()["id"])
    outcomes = {d["device_id"]: (d["status"], d["reason"]) for d in got["deliveries"]}
    assert outcomes == {
        ok.id: ("sent", None),
        disabled.id: ("suppressed", "disabled"),
        denied.id: ("suppressed", "push_permission_denied"),
        terminated.id: ("suppressed", "account_terminated"),
    }
    assert got["counts"]["suppressed"] == {
        "disabled": 1,
        "push_permission_denied": 1,
        "account_terminated": 1,
    }


@pytest.mark.parametrize("role", ["app", "marketing", "support", "privacy"])
def test_only_notify_and_admin_keys_may_send(
    role: str, make_key: Callable[[str], str], post_notification: Post
) -> None:
    response = post_notification(bearer(make_key(role)), notification_body())
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"


def test_a_notify_key_reads_only_what_notify_keys_made(
    client: FlaskClient,
    notify: Headers,
    admin: Headers,
    make_key: Callable[[str], str],
    post_notification: Post,
) -> None:
    by_admin = post_notification(admin, notification_body()).get_json()["id"]
    by_notify = post_notification(notify, notification_body()).get_json()["id"]
    other_notify = bearer(make_key("notify"))
    assert client.get(f"/v1/notifications/{by_notify}", headers=other_notify).status_code == 200
    assert client.get(f"/v1/notifications/{by_notify}", headers=admin).status_code == 200
    hidden = client.get(f"/v1/notifications/{by_admin}", headers=notify)
    assert hidden.status_code == 404 and hidden.get_json()["error"] == "not_found"
    # Told apart from a notification that does not exist by nothing, not even the message.
    missing = client.get("/v1/notifications/01J0000000000000000000NONE", headers=notify)
    assert hidden.get_json() == missing.get_json()
    assert hidden.get_json()["message"] == "No such notification."
    marketing = bearer(make_key("marketing"))
    assert client.get(f"/v1/notifications/{by_notify}", headers=marketing).status_code == 403


def test_service_needs_admin_and_promotional_is_refused(
    notify: Headers, admin: Headers, post_notification: Post
) -> None:
    refused = post_notification(notify, notification_body(category_key="service"))
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "service_notification_requires_admin"
    assert post_notification(admin, notification_body(category_key="service")).status_code == 202
    promotional = post_notification(admin, notification_body(category_key="promotions"))
    assert promotional.status_code == 422
    assert promotional.get_json()["error"] == "promotional_category_not_allowed"
    unknown = post_notification(notify, notification_body(category_key="no_such"))
    assert unknown.status_code == 422


@pytest.mark.parametrize(
    "change",
    [
        {"account_id": "acct-1", "device_ids": ["0" * 26]},
        {"account_id": None},
        {"device_ids": []},
        {"device_ids": ["not-an-id"]},
        {"image_url": "http://example.com/a.png"},
        {"title": None},
        {"surprise": 1},
        {"content": {"not a tag": {"title": "t", "body": "b"}}},
        {"ttl_seconds": -1},
    ],
)
def test_bad_bodies_are_refused_and_create_nothing(
    change: dict[str, Any], notify: Headers, post_notification: Post
) -> None:
    body = notification_body()
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    response = post_notification(notify, body, idempotency_key())
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"]


@pytest.mark.parametrize("key", ["", "x" * 256, "with space"])
def test_a_malformed_idempotency_key_is_refused(
    key: str, notify: Headers, post_notification: Post
) -> None:
    response = post_notification(notify, notification_body(), key)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.get_json()["errors"]["headers"]


def test_the_same_key_and_equal_body_return_the_same_notification_and_send_once(
    app: Flask,
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    phone = device(promotional=False, account_id="acct-1")
    key = idempotency_key()
    first = post_notification(notify, notification_body(), key)
    assert first.status_code == 202
    drain(app)
    # Equal as parsed JSON: key order does not matter.
    reordered = dict(reversed(list(notification_body().items())))
    again = post_notification(notify, reordered, key)
    assert again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.get_json()["status"] == "completed"  # its current status
    drain(app)
    assert _tokens(fcm) == {phone.push_token: 1}


def test_the_same_key_with_another_body_is_refused(
    notify: Headers, post_notification: Post
) -> None:
    key = idempotency_key()
    assert post_notification(notify, notification_body(), key).status_code == 202
    other = post_notification(notify, notification_body(title="Something else"), key)
    assert other.status_code == 422
    assert other.get_json()["error"] == "idempotency_key_reused"


def test_keys_are_scoped_to_the_api_key(
    notify: Headers, make_key: Callable[[str], str], post_notification: Post
) -> None:
    key = idempotency_key()
    first = post_notification(notify, notification_body(), key).get_json()["id"]
    other = post_notification(bearer(make_key("notify")), notification_body(), key)
    assert other.status_code == 202 and other.get_json()["id"] != first


def test_a_refused_request_is_not_remembered(notify: Headers, post_notification: Post) -> None:
    key = idempotency_key()
    refused = post_notification(notify, notification_body(category_key="service"), key)
    assert refused.status_code == 403
    assert post_notification(notify, notification_body(), key).status_code == 202


def test_an_idempotent_notification_retried_from_two_processes_at_once_sends_once(
    app: Flask,
    live_server: LiveServer,
    ticket_reply: str,
    notify: Headers,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    phones = [device(promotional=False, account_id="acct-1") for _ in range(3)]
    body = notification_body()

    def race(key: str) -> tuple[list[requests.Response], set[str]]:
        """16 POSTs of one key at once; the answers, and the workers that gave them."""
        start = threading.Barrier(16)
        answered_before = live_server.answered()

        def post(_: int) -> requests.Response:
            start.wait()
            return requests.post(
                f"{live_server.url}/v1/notifications",
                json=body,
                headers={**notify, "Idempotency-Key": key},
                timeout=30,
            )

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(16)))
        return answers, live_server.pids("POST", after=answered_before)

    # The race must really be between the two gunicorn workers; on a loaded machine
    # one of them may take all 16 requests, so a round in which it did is run again
    # with a new key (each round must itself send once).
    rounds = 0
    for _ in range(5):
        key = idempotency_key()
        answers, pids = race(key)
        rounds += 1
        assert [a.status_code for a in answers] == [202] * 16, [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1
        if len(pids) == 2:
            break
    assert len(pids) == 2, "one gunicorn worker answered every request of five rounds"
    drain(app)
    again = requests.post(
        f"{live_server.url}/v1/notifications",
        json=body,
        headers={**notify, "Idempotency-Key": key},
        timeout=30,
    )
    assert again.json() == {**answers[0].json(), "status": "completed"}
    drain(app)
    assert _tokens(fcm) == {phone.push_token: rounds for phone in phones}
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Notification)) == rounds
        db.session.remove()


def _hold_key(app: Flask, notify: Headers, key: str, body: dict[str, Any]) -> sa.Connection:
    """An open, uncommitted transaction that claimed `key` for `body`, with its notification."""
    with app.app_context():
        api_key = keys.authenticate(db.session, notify["Authorization"].split()[1])
        db.session.remove()
        assert api_key is not None
        connection = db.engine.connect()
    notification_id = new_id()
    connection.execute(
        sa.insert(IdempotencyKey).values(
            api_key_id=api_key.id,
            key=key,
            fingerprint=notification_service.fingerprint(body),
            notification_id=notification_id,
            created_at=utcnow(),
        )
    )
    connection.execute(
        sa.insert(Notification).values(
            id=notification_id,
            category_key=body["category_key"],
            title=body["title"],
            body=body["body"],
            content={},
            data={},
            account_id=body["account_id"],
            created_by=f"key:{api_key.id}",
            created_role="notify",
            created_at=utcnow(),
        )
    )
    return connection


def test_a_duplicate_while_the_first_is_being_accepted_gets_its_answer_once_it_commits(
    app: Flask, notify: Headers, post_notification: Post
) -> None:
    key, body = idempotency_key(), notification_body()
    first = _hold_key(app, notify, key, body)
    committer = threading.Timer(0.5, first.commit)
    committer.start()
    try:
        answer = post_notification(notify, body, key)
    finally:
        committer.join()
        first.close()
    assert answer.status_code == 202, answer.get_json()
    with app.app_context():
        made = db.session.scalars(sa.select(Notification.id)).all()
        db.session.remove()
    assert [answer.get_json()["id"]] == made


def test_a_duplicate_waiting_too_long_for_the_first_gets_409_with_retry_after(
    app: Flask, notify: Headers, post_notification: Post
) -> None:
    app.config["NOTIFY_IDEMPOTENCY_WAIT_SECONDS"] = 0.3
    key, body = idempotency_key(), notification_body()
    first = _hold_key(app, notify, key, body)
    try:
        answer = post_notification(notify, body, key)
    finally:
        first.rollback()  # the first request failed: its key is not remembered
        first.close()
    assert answer.status_code == 409
    assert answer.get_json()["error"] == "request_in_progress"
    assert int(answer.headers["Retry-After"]) >= 1
    retried = post_notification(notify, body, key)
    assert retried.status_code == 202
    # Without a key, another request goes through at once.
    assert post_notification(notify, body).status_code == 202


def _choose(client: FlaskClient, made: Made, **choices: bool) -> None:
    response = client.put(
        "/v1/devices/me/preferences",
        json={"categories": choices},
        headers=bearer(made.device_token),
    )
    assert response.status_code == 200, response.get_json()


def test_consent_withdrawn_before_hand_off_suppresses_and_nothing_reaches_fcm(
    app: Flask,
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    keeps = device(promotional=False, account_id="acct-1")
    withdraws = device(promotional=False, account_id="acct-1")
    accepted = post_notification(notify, notification_body()).get_json()
    # Accepted while both had the category on (its default); one turns it off before the
    # dispatcher hands the message over.
    _choose(client, withdraws, ticket_reply=False)
    drain(app)
    assert _tokens(fcm) == {keeps.push_token: 1}
    got = notification_status(client, notify, accepted["id"])
    outcomes = {d["device_id"]: (d["status"], d["reason"]) for d in got["deliveries"]}
    assert outcomes == {
        keeps.id: ("sent", None),
        withdraws.id: ("suppressed", "category_opt_out"),
    }


def test_a_category_off_by_default_needs_the_users_choice_and_service_needs_none(
    app: Flask,
    client: FlaskClient,
    notify: Headers,
    admin: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    put_category(client, admin, "survey", **{**TICKET_REPLY, "default_enabled": False})
    chose = device(promotional=False, account_id="acct-1")
    never_chose = device(promotional=False, account_id="acct-1")
    _choose(client, chose, survey=True)
    survey = post_notification(notify, notification_body(category_key="survey")).get_json()
    service = post_notification(admin, notification_body(category_key="service")).get_json()
    drain(app)
    got = notification_status(client, notify, survey["id"])
    assert {d["device_id"]: d["status"] for d in got["deliveries"]} == {
        chose.id: "sent",
        never_chose.id: "suppressed",
    }
    got = notification_status(client, admin, service["id"])
    assert got["counts"]["sent"] == 2
    assert _tokens(fcm) == {chose.push_token: 2, never_chose.push_token: 1}


def test_a_notification_overtakes_a_campaign_that_is_sending(
    app: Flask,
    client: FlaskClient,
    notify: Headers,
    marketing: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    app.config.update(DISPATCH_CHUNK_SIZE=5, NOTIFY_POLL_SECONDS=0.02)
    for _ in range(100):
        device()
    helpdesk_user = device(promotional=False, account_id="acct-1")
    campaign = client.post("/v1/campaigns", json=campaign_body(), headers=marketing)
    campaign_id = campaign.get_json()["id"]
    fcm.delay = 0.03  # every chunk of the campaign takes a while at FCM
    worker = Worker(app)
    running = threading.Thread(target=worker.run)
    running.start()
    try:
        assert client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing).status_code
        deadline = time.monotonic() + 30
        while len(fcm.received) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        post_notification(notify, notification_body())
        while not fcm.messages_for(helpdesk_user.push_token) and time.monotonic() < deadline:
            time.sleep(0.01)
        campaign_sent_before = len(fcm.received) - 1
    finally:
        worker.stop()
        running.join()
    assert fcm.messages_for(helpdesk_user.push_token), "the notification never arrived"
    # It went out while most of the campaign was still to be sent.
    assert campaign_sent_before < 60, campaign_sent_before


def test_a_key_older_than_24_hours_no_longer_counts(
    app: Flask, notify: Headers, post_notification: Post
) -> None:
    key = idempotency_key()
    first = post_notification(notify, notification_body(), key).get_json()["id"]
    with app.app_context():
        db.session.execute(
            sa.update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=24, minutes=1))
        )
        db.session.commit()
        db.session.remove()
    other = post_notification(notify, notification_body(title="A new reply"), key)
    assert other.status_code == 202
    assert other.get_json()["id"] != first
    # The key now stands for the new notification.
    again = post_notification(notify, notification_body(title="A new reply"), key)
    assert again.get_json()["id"] == other.get_json()["id"]
    with app.app_context():
        assert notification_service.expire_idempotency_keys() == 0
        db.session.execute(
            sa.update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25))
        )
        db.session.commit()
        assert notification_service.expire_idempotency_keys() == 1
        db.session.remove()


def test_each_device_gets_its_language_and_the_categorys_channel(
    app: Flask,
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    exact = device(promotional=False, account_id="acct-1", locale="pt-BR")
    same_language = device(promotional=False, account_id="acct-1", locale="pt-PT")
    other = device(promotional=False, account_id="acct-1", locale="de-DE")
    body = notification_body(
        content={
            "pt-BR": {"title": "Resposta", "body": "BR"},
            "pt-AO": {"title": "Resposta", "body": "AO"},
            "id": {"title": "Balasan", "body": "ID"},
        },
        default_locale="en",
        image_url="https://cdn.example.com/agent.png",
    )
    assert post_notification(notify, body).status_code == 202
    drain(app)
    bodies = {
        token: fcm.messages_for(token)[0].body["message"]
        for token in (exact.push_token, same_language.push_token, other.push_token)
    }
    assert bodies[exact.push_token]["notification"]["body"] == "BR"
    # The first key in sorted order with the same language.
    assert bodies[same_language.push_token]["notification"]["body"] == "AO"
    assert bodies[other.push_token]["notification"]["body"] == "Ticket #42 has a new reply."
    message = bodies[exact.push_token]
    assert message["android"]["notification"]["channel_id"] == TICKET_REPLY["android_channel_id"]
    aps = message["apns"]["payload"]["aps"]
    assert aps["interruption-level"] == TICKET_REPLY["ios_interruption_level"]
    assert message["notification"]["image"] == "https://cdn.example.com/agent.png"


def test_campaigns_run_at_a_lower_cpu_priority_than_notifications(
    dispatcher_app: Callable[..., Flask], fcm_settings: dict[str, Any]
) -> None:
    """DISPATCH_CAMPAIGN_NICE: a campaign pass yields the CPU, the notification lane does not."""
    sender = dispatcher_app(**fcm_settings, DISPATCH_CAMPAIGN_NICE=7)
    worker = Worker(sender)
    seen: dict[str, int] = {}

    def noting(name: str, work: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            seen[name] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            return work()

        return run

    worker.run_pass = noting("campaigns", worker.run_pass)  # type: ignore[method-assign]
    worker.run_notifications = noting("notifications", worker.run_notifications)  # type: ignore[method-assign]
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker.run(drain=True)
    assert seen == {"campaigns": max(ours, 7), "notifications": ours}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ours  # the caller's own


@pytest.mark.postgres
def test_an_accepted_notification_wakes_the_lane_before_its_poll(
    postgres_url: str, fcm_settings: dict[str, Any], fcm: FakeFcmServer
) -> None:
    """PostgreSQL: the accepting commit NOTIFYs the embedded lane, which does not wait its poll."""
    server = make_app(postgres_url, **fcm_settings, NOTIFY_POLL_SECONDS=60.0)
    migrate_once(server)
    with server.app_context():
        _, app_secret = keys.create(db.session, "app", "phone")
        _, notify_secret = keys.create(db.session, "notify", "helpdesk")
        categories.put(db.session, TRANSACTIONAL, TICKET_REPLY, Caller(actor="t", role="admin"))
    web = server.test_client()
    registered = web.post(
        "/v1/devices",
        json=device_body(push_token="tok-woken", push_permission="granted", account_id="acct-1"),
        headers=bearer(app_secret),
    )
    assert registered.status_code == 201
    worker = Worker(server)
    passed = threading.Event()
    first_pass = worker.run_notifications

    def noting_pass() -> int:
        claimed = first_pass()
        passed.set()
        return claimed

    worker.run_notifications = noting_pass  # type: ignore[method-assign]
    dispatcher = threading.Thread(target=worker.run)
    dispatcher.start()
    try:
        assert passed.wait(30)  # from here on the lane waits: only a wake-up helps
        posted = time.monotonic()
        response = web.post(
            "/v1/notifications", json=notification_body(), headers=bearer(notify_secret)
        )
        assert response.status_code == 202
        while not fcm.messages_for("tok-woken") and time.monotonic() < posted + 20:
            time.sleep(0.02)
        woken = bool(fcm.messages_for("tok-woken"))  # within 20 s; the poll takes 60
    finally:
        worker.stop()
        dispatcher.join()
        close_transport(server)
        wipe(server)
    assert woken, "the lane slept through its wake-up"
