"""iOS through APNs: registration with push_provider, the APNs transport, mixed campaigns."""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mobile_api import push
from mobile_api.extensions import db
from mobile_api.push import Outcome, PushMessage, Reason
from mobile_api.push import apns as apns_module
from mobile_api.services import dispatch
from mobile_api.services import keys as key_service
from tests.apns_fixtures import apns, apns_sandbox, apns_settings, ios_device
from tests.campaign_fixtures import (
    Made,
    Sent,
    assert_balanced,
    campaign_status,
    close_transport,
    create_campaign,
    deliveries,
    device,
    dispatcher_app,
    drain,
    fcm,
    fcm_settings,
    marketing,
    send_and_drain,
    sent_campaign,
    stop,
    subprocess_env,
    wait_for,
)
from tests.celery_fixtures import REDIS_URL, queue, start_worker
from tests.conftest import bearer, make_app, migrate_once, wipe
from tests.fakes.apns_server import FakeApnsServer, apns_token
from tests.fakes.fcm_server import FakeFcmServer

__all__ = [
    "apns",
    "apns_sandbox",
    "apns_settings",
    "create_campaign",
    "device",
    "dispatcher_app",
    "fcm",
    "fcm_settings",
    "ios_device",
    "marketing",
    "queue",
    "sent_campaign",
]

Send = Callable[..., Sent]


@pytest.fixture
def app(
    app_factory: Callable[..., Flask],
    fcm_settings: dict[str, Any],
    apns_settings: dict[str, Any],
) -> Iterator[Flask]:
    """The app sending through firebase-admin and the APNs transport to the loopback servers."""
    built = app_factory(**fcm_settings, **apns_settings)
    yield built
    close_transport(built)


@pytest.fixture
def transports(app: Flask) -> dict[str, Any]:
    """The transports the app builds, by provider."""
    router = push.transport(app)
    assert isinstance(router, push.Router)
    return router.transports


def _register(client: FlaskClient, app_key: str, **body: Any) -> Any:
    from tests.conftest import device_body

    return client.post("/v1/devices", json=device_body(**body), headers=bearer(app_key))


# --- registration and check-in -----------------------------------------------------------


def test_an_ios_device_registers_with_its_apns_token(client: FlaskClient, app_key: str) -> None:
    token = apns_token()
    response = _register(
        client, app_key, platform="ios", os_version="17.4", push_provider="apns", push_token=token
    )
    assert response.status_code == 201, response.get_json()
    device = response.get_json()["device"]
    assert (device["push_provider"], device["push_token"]) == ("apns", token)
    device_token = response.get_json()["device_token"]
    export = client.get("/v1/devices/me/export", headers=bearer(device_token)).get_json()
    assert export["device"]["push_provider"] == "apns"


def test_the_provider_defaults_to_fcm(client: FlaskClient, app_key: str) -> None:
    response = _register(client, app_key, push_token="fcm-token-1")
    assert response.get_json()["device"]["push_provider"] == "fcm"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"platform": "android", "push_provider": "apns"}, "push_provider"),
        ({"platform": "android", "push_provider": "apns_sandbox"}, "push_provider"),
        ({"platform": "ios", "push_provider": "apns", "push_token": "not-hex-" * 10}, "push_token"),
        ({"platform": "ios", "push_provider": "apns", "push_token": "ab" * 31}, "push_token"),
    ],
)
def test_apns_needs_ios_and_a_hex_token_of_64_or_more(
    client: FlaskClient, app_key: str, body: dict[str, Any], field: str
) -> None:
    body.setdefault("push_token", apns_token())
    response = _register(client, app_key, **body)
    assert response.status_code == 422, response.get_json()
    answer = response.get_json()
    assert answer["error"] == "push_provider_mismatch"
    assert field in answer["errors"]["json"]


def test_an_unknown_provider_is_refused(client: FlaskClient, app_key: str) -> None:
    response = _register(client, app_key, push_provider="webpush", push_token="x" * 20)
    assert response.status_code == 422
    assert "push_provider" in response.get_json()["errors"]["json"]


def test_a_change_of_provider_must_come_with_its_token(client: FlaskClient, app_key: str) -> None:
    registered = _register(
        client, app_key, platform="ios", os_version="17.4", push_token="fcm-ios-token-1"
    ).get_json()
    me = bearer(registered["device_token"])
    alone = client.patch("/v1/devices/me", json={"push_provider": "apns"}, headers=me)
    assert alone.status_code == 422
    assert "push_token" in alone.get_json()["errors"]["json"]
    assert client.get("/v1/devices/me", headers=me).get_json()["push_provider"] == "fcm"

    token = apns_token()
    moved = client.patch(
        "/v1/devices/me", json={"push_provider": "apns", "push_token": token}, headers=me
    )
    assert moved.status_code == 200, moved.get_json()
    assert (moved.get_json()["push_provider"], moved.get_json()["push_token"]) == ("apns", token)
    # A later check-in with only a token keeps the provider, and checks the token against it.
    bad = client.patch("/v1/devices/me", json={"push_token": "fcm-again"}, headers=me)
    assert bad.status_code == 422
    newer = apns_token()
    assert client.patch("/v1/devices/me", json={"push_token": newer}, headers=me).status_code == 200


def test_an_apns_token_moves_between_devices_as_before(client: FlaskClient, app_key: str) -> None:
    token = apns_token()
    ios = {"platform": "ios", "os_version": "17.4", "push_provider": "apns_sandbox"}
    first = _register(client, app_key, push_token=token, **ios).get_json()
    second = _register(client, app_key, push_token=token, **ios)
    assert second.status_code == 201
    old = client.get("/v1/devices/me", headers=bearer(first["device_token"])).get_json()
    assert old["push_token"] is None


def test_a_re_registration_keeps_the_provider_it_does_not_name(
    client: FlaskClient, app_key: str
) -> None:
    token = apns_token()
    body = {"platform": "ios", "os_version": "17.4", "push_provider": "apns", "push_token": token}
    first = _register(client, app_key, **body).get_json()
    again = client.post(
        "/v1/devices",
        json={
            "installation_id": first["device"]["installation_id"],
            "platform": "ios",
            "os_version": "17.5",
        },
        headers={**bearer(app_key), "X-Device-Token": first["device_token"]},
    )
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["device"]["push_provider"] == "apns"


# --- preview ------------------------------------------------------------------------------


def test_without_apns_settings_apns_devices_count_as_no_push_token(
    app_factory: Callable[..., Flask],
    fcm_settings: dict[str, Any],
    apns_settings: dict[str, Any],
    make_key: Callable[[str], str],
) -> None:
    unconfigured = app_factory(**fcm_settings)
    client = unconfigured.test_client()
    app_key, marketing_key = make_key("app"), make_key("marketing")
    ios = {"platform": "ios", "os_version": "17.4", "push_permission": "granted"}
    for body in (
        {**ios, "push_provider": "apns", "push_token": apns_token()},
        {**ios, "push_provider": "apns_sandbox", "push_token": apns_token()},
        {**ios, "push_token": "fcm-ios-token"},
    ):
        assert _register(client, app_key, **body).status_code == 201
    campaign = client.post(
        "/v1/campaigns",
        json={"name": "n", "category": "service", "title": "t", "body": "b"},
        headers=bearer(make_key("admin")),
    ).get_json()["id"]
    del marketing_key
    admin = bearer(make_key("admin"))
    preview = client.post(f"/v1/campaigns/{campaign}/preview", headers=admin).get_json()
    assert preview["eligible"] == 1
    assert preview["excluded"]["no_push_token"] == 2

    configured = app_factory(**fcm_settings, **apns_settings)
    preview = (
        configured.test_client().post(f"/v1/campaigns/{campaign}/preview", headers=admin).get_json()
    )
    assert preview["eligible"] == 3
    assert preview["excluded"]["no_push_token"] == 0


# --- the transport against the loopback APNs ------------------------------------------------


def _msg(token: str, **fields: Any) -> PushMessage:
    return PushMessage(token=token, title="Hello", body="World", provider="apns", **fields)


@pytest.mark.parametrize(
    ("kind", "outcome", "reason"),
    [
        ("ok", Outcome.SENT, None),
        ("bad_device_token", Outcome.INVALID_TOKEN, Reason.BAD_DEVICE_TOKEN),
        ("unregistered", Outcome.INVALID_TOKEN, Reason.UNREGISTERED),
        ("too_many_requests", Outcome.RETRY, Reason.QUOTA_EXCEEDED),
        ("internal", Outcome.RETRY, Reason.INTERNAL),
        ("unavailable", Outcome.RETRY, Reason.UNAVAILABLE),
        ("payload_too_large", Outcome.FAILED, Reason.PAYLOAD_TOO_LARGE),
        ("topic_disallowed", Outcome.FAILED, Reason.TOPIC_DISALLOWED),
    ],
)
def test_apples_answers_map_to_the_common_outcomes(
    transports: dict[str, Any], apns: FakeApnsServer, kind: str, outcome: Outcome, reason: str
) -> None:
    token = apns_token()
    apns.behaviour[token] = kind
    apns.retry_after = "12"
    [result] = transports["apns"].send([_msg(token)])
    assert (result.outcome, result.error) == (outcome, reason)
    if kind == "ok":
        assert result.message_id == apns.received[0].apns_id
    if kind == "too_many_requests":
        assert result.retry_after == 12.0


def test_a_message_carries_apns_headers_and_payload(
    transports: dict[str, Any], apns: FakeApnsServer
) -> None:
    token = apns_token()
    before = int(time.time())
    message = _msg(
        token,
        data={"screen": "offers", "aps": "ignored"},
        ttl_seconds=600,
        collapse_id="campaign-1",
        priority="high",
        ios_interruption_level="time-sensitive",
    )
    assert transports["apns"].send([message])[0].outcome == Outcome.SENT
    [received] = apns.received
    headers = received.headers
    assert headers["apns-topic"] == apns.topic
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert before + 600 <= int(headers["apns-expiration"]) <= int(time.time()) + 600
    assert headers["apns-collapse-id"] == "campaign-1"
    assert received.payload == {
        "screen": "offers",
        "aps": {
            "alert": {"title": "Hello", "body": "World"},
            "interruption-level": "time-sensitive",
        },
    }
    assert received.claims is not None and received.claims["iss"] == apns.team_id

    transports["apns"].send([_msg(token, ttl_seconds=0)])
    normal = apns.received[-1].headers
    assert (normal["apns-priority"], normal["apns-expiration"]) == ("5", "0")
    assert "apns-collapse-id" not in normal


def test_a_batch_is_multiplexed_over_one_connection_with_one_provider_token(
    transports: dict[str, Any], apns: FakeApnsServer
) -> None:
    tokens = [apns_token() for _ in range(300)]
    results = transports["apns"].send([_msg(t) for t in tokens])
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert [m.token for m in apns.received] != []
    assert collections.Counter(m.token for m in apns.received) == collections.Counter(tokens)
    assert apns.connections == 1
    assert len(apns.provider_tokens) == 1


def test_the_provider_token_is_renewed_when_apple_says_it_expired(
    transports: dict[str, Any], apns: FakeApnsServer
) -> None:
    token = apns_token()
    transports["apns"].send([_msg(token)])
    apns.expire_tokens_before = time.time() + 1  # every token signed so far is expired
    [refused] = transports["apns"].send([_msg(token), _msg(apns_token())])[:1]
    assert (refused.outcome, refused.error) == (Outcome.RETRY, Reason.UNAUTHENTICATED)
    apns.expire_tokens_before = 0
    assert transports["apns"].send([_msg(token)])[0].outcome == Outcome.SENT
    assert len(apns.provider_tokens) == 2  # renewed once, for the whole batch


def test_the_provider_token_is_renewed_before_apples_hour(
    transports: dict[str, Any], apns: FakeApnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    transports["apns"].send([_msg(apns_token())])
    transports["apns"].send([_msg(apns_token())])
    assert len(apns.provider_tokens) == 1
    # As if TOKEN_REFRESH_SECONDS (40 min, under Apple's 60) had passed since signing.
    monkeypatch.setattr(apns_module, "TOKEN_REFRESH_SECONDS", 0)
    time.sleep(1.1)  # iat has whole seconds
    transports["apns"].send([_msg(apns_token())])
    assert len(apns.provider_tokens) == 2


def test_a_wrong_key_id_or_team_fails_for_good(
    app_factory: Callable[..., Flask],
    apns_settings: dict[str, Any],
    apns: FakeApnsServer,
) -> None:
    for wrong in ({"APNS_KEY_ID": "OTHERKEY99"}, {"APNS_TEAM_ID": "OTHERTEAM9"}):
        built = push.transport(app_factory(**{**apns_settings, **wrong}))
        try:
            [result] = built.send([_msg(apns_token())])
        finally:
            built.close()
        assert (result.outcome, result.error) == (Outcome.FAILED, Reason.AUTH_ERROR)


def test_an_unreachable_or_silent_host_is_retried_later(
    app_factory: Callable[..., Flask],
    apns_settings: dict[str, Any],
    apns: FakeApnsServer,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{probe.getsockname()[1]}"
    apns.delay = 1.0
    for overrides in ({"APNS_ENDPOINT": closed}, {"APNS_TIMEOUT": 0.3}):
        built = push.transport(app_factory(**{**apns_settings, **overrides}))
        try:
            results = built.send([_msg(apns_token()), _msg(apns_token())])
        finally:
            built.close()
        assert {(r.outcome, r.error) for r in results} == {(Outcome.RETRY, Reason.TRANSPORT_ERROR)}


def test_a_dropped_connection_is_reopened_for_the_next_batch(
    transports: dict[str, Any], apns: FakeApnsServer
) -> None:
    sent = transports["apns"].send([_msg(apns_token()) for _ in range(50)])
    assert {r.outcome for r in sent} == {Outcome.SENT}
    apns.drop_connections()
    started = time.monotonic()
    during = transports["apns"].send([_msg(apns_token()) for _ in range(50)])
    # Each stream either went out on a new connection or is retried later; none hangs
    # until its timeout (5 s) on the dead one.
    assert {(r.outcome, r.error) for r in during} <= {
        (Outcome.SENT, None),
        (Outcome.RETRY, Reason.TRANSPORT_ERROR),
    }
    assert time.monotonic() - started < 4
    after = transports["apns"].send([_msg(apns_token()) for _ in range(50)])
    assert {r.outcome for r in after} == {Outcome.SENT}
    assert apns.connections == 2


def test_sandbox_tokens_go_to_the_sandbox_host(
    transports: dict[str, Any], apns: FakeApnsServer, apns_sandbox: FakeApnsServer
) -> None:
    token = apns_token()
    results = push.Router(transports).send(
        [PushMessage(token=token, title="t", body="b", provider="apns_sandbox")]
    )
    assert results[0].outcome == Outcome.SENT
    assert [m.token for m in apns_sandbox.received] == [token]
    assert apns.received == []


def test_an_unreadable_key_stops_the_dispatcher_at_start(
    app_factory: Callable[..., Flask], apns_settings: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "AuthKey_bad.p8"
    bad.write_text("not a key")
    with pytest.raises(RuntimeError, match="APNS_KEY_FILE"):
        push.transport(app_factory(**{**apns_settings, "APNS_KEY_FILE": str(bad)}))


# --- dispatch: one campaign across FCM and APNs ---------------------------------------------


def _mixed_audience(
    device: Callable[..., Made], ios_device: Callable[..., Made]
) -> dict[str, Made]:
    return {
        "android_fcm": device(),
        "ios_fcm": device(platform="ios", os_version="17.4"),
        "ios_apns": ios_device(),
        "ios_sandbox": ios_device("apns_sandbox"),
        "android_opted_out": device(promotional=False),
        "ios_apns_opted_out": ios_device(promotional=False),
        "ios_apns_dead": ios_device(prefix="badd"),
        "ios_apns_busy": ios_device(),
    }


def test_a_mixed_campaign_reaches_each_device_once_through_its_transport(
    app: Flask,
    client: FlaskClient,
    marketing: dict[str, str],
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
    ios_device: Callable[..., Made],
    fcm: FakeFcmServer,
    apns: FakeApnsServer,
    apns_sandbox: FakeApnsServer,
) -> None:
    made = _mixed_audience(device, ios_device)
    busy = made["ios_apns_busy"].push_token
    assert busy is not None
    apns.fail_times(busy, 1, "too_many_requests")  # retried, then sent
    campaign_id = create_campaign(ttl_seconds=3600, priority="high")
    counts = send_and_drain(client, app, marketing, campaign_id)["counts"]

    fcm_tokens = {m.token for m in fcm.received}
    assert fcm_tokens == {made["android_fcm"].push_token, made["ios_fcm"].push_token}
    assert collections.Counter(m.token for m in fcm.received if m.answer == "ok") == (
        collections.Counter(dict.fromkeys(fcm_tokens, 1))
    )
    apns_ok = [m.token for m in apns.received if m.status == 200]
    assert collections.Counter(apns_ok) == collections.Counter(
        {made["ios_apns"].push_token: 1, busy: 1}
    )
    assert [m.token for m in apns_sandbox.received] == [made["ios_sandbox"].push_token]
    for opted_out in ("android_opted_out", "ios_apns_opted_out"):
        token = made[opted_out].push_token
        assert token not in fcm_tokens
        assert apns.messages_for(str(token)) == []
    assert apns.received[0].headers["apns-priority"] == "10"

    rows = deliveries(app, campaign_id)
    assert rows[made["ios_apns_dead"].id] == ("failed", "bad_device_token")
    assert rows[made["ios_apns_opted_out"].id] == ("suppressed", "promotional_opt_out")
    assert counts["sent"] == 5
    assert counts["invalid_tokens_pruned"] == 1
    assert counts["suppressed"] == {"promotional_opt_out": 2}
    assert_balanced(counts)
    dead = client.get("/v1/devices/me", headers=bearer(made["ios_apns_dead"].device_token))
    assert dead.get_json()["push_token_valid"] is False


def test_consent_is_read_at_hand_off_for_apns_devices(
    app: Flask,
    client: FlaskClient,
    sent_campaign: Send,
    ios_device: Callable[..., Made],
    apns: FakeApnsServer,
) -> None:
    stays, leaves = ios_device(), ios_device()
    campaign_id = sent_campaign().id
    with app.app_context():
        dispatch.enumerate_batch(db.session, campaign_id, dispatch.Settings.from_config(app.config))
        db.session.remove()
    # Targeted while opted in, opted out before the hand-off.
    response = client.put(
        "/v1/devices/me/preferences",
        json={"promotional_push": False},
        headers=bearer(leaves.device_token),
    )
    assert response.status_code == 200
    drain(app)
    assert [m.token for m in apns.received] == [stays.push_token]
    assert deliveries(app, campaign_id)[leaves.id] == ("suppressed", "promotional_opt_out")


def test_a_chunks_fcm_and_apns_groups_go_out_at_the_same_time(
    dispatcher_app: Callable[..., Flask],
    apns_settings: dict[str, Any],
    sent_campaign: Send,
    ios_device: Callable[..., Made],
    fcm: FakeFcmServer,
    apns: FakeApnsServer,
) -> None:
    # APNs devices first: a router sending the groups in turn would start with theirs.
    ios = {ios_device().push_token for _ in range(3)}
    campaign_id, made = sent_campaign(devices=3)
    android = {d.push_token for d in made}
    # The APNs transport waits for Apple's answers longer than the test waits for FCM.
    app = dispatcher_app(apns_settings, APNS_TIMEOUT=60.0)
    apns.hold()  # Apple receives the chunk's APNs group and does not answer yet
    dispatcher = threading.Thread(target=drain, args=(app,))
    dispatcher.start()
    try:
        # FCM has the chunk's FCM group while APNs still holds its first answer.
        assert wait_for(lambda: {m.token for m in fcm.received} == android, 15)
        assert wait_for(lambda: bool(apns.received), 15)  # arrived, waiting for its answer
        assert dispatcher.is_alive()  # the chunk is not recorded: APNs has not answered
    finally:
        apns.release()
        dispatcher.join()
    assert collections.Counter(m.token for m in fcm.received) == collections.Counter(
        dict.fromkeys(android, 1)
    )
    assert collections.Counter(m.token for m in apns.received) == collections.Counter(
        dict.fromkeys(ios, 1)
    )
    rows = deliveries(app, campaign_id)
    assert sorted(rows.values()) == [("sent", None)] * 6


def test_apns_is_paced_by_its_own_rate_and_fcm_by_its_own(
    dispatcher_app: Callable[..., Flask],
    apns_settings: dict[str, Any],
    sent_campaign: Send,
    ios_device: Callable[..., Made],
    fcm: FakeFcmServer,
    apns: FakeApnsServer,
) -> None:
    ios = {ios_device().push_token for _ in range(20)}
    android = sent_campaign(devices=20).tokens
    # APNs at 20 messages/s (slots of 4); FCM unpaced, as APNS_... does not pace it.
    drain(dispatcher_app(apns_settings, APNS_MAX_MESSAGES_PER_SECOND=20))
    assert {m.token for m in fcm.received} == android
    assert {m.token for m in apns.received} == ios
    arrivals = sorted(m.at for m in apns.received)
    assert arrivals[-1] - arrivals[0] >= (20 - 4) / 20 - 0.05
    for index in range(len(arrivals) - 8):
        assert arrivals[index + 8] - arrivals[index] >= 4 / 20 - 0.05  # no burst above it
    # FCM's group did not wait for APNs' slots.
    assert max(m.at for m in fcm.received) < arrivals[-1] - 0.4


@pytest.fixture
def celery_app(
    postgres_url: str,
    fcm_settings: dict[str, Any],
    apns_settings: dict[str, Any],
    queue: str,
) -> Iterator[Flask]:
    """The web app on the scratch PostgreSQL database, with Celery on Redis."""
    built = make_app(
        postgres_url,
        **fcm_settings,
        **apns_settings,
        CELERY_BROKER_URL=REDIS_URL,
        CELERY_QUEUE=queue,
    )
    migrate_once(built)
    yield built
    close_transport(built)
    wipe(built)


def test_a_mixed_campaign_on_celery_workers(
    celery_app: Flask,
    postgres_url: str,
    fcm_settings: dict[str, Any],
    apns_settings: dict[str, Any],
    queue: str,
    fcm: FakeFcmServer,
    apns: FakeApnsServer,
    apns_sandbox: FakeApnsServer,
    tmp_path: Path,
) -> None:
    web = celery_app.test_client()
    with celery_app.app_context():
        app_key = key_service.create(db.session, "app", "test app")[1]
        marketing_headers = bearer(key_service.create(db.session, "marketing", "test m")[1])
    fcm_tokens = [f"tok-celery-{i}" for i in range(4)]
    ios_fcm_tokens = ["tok-celery-ios", "tok-celery-ios-out"]  # iOS apps embedding Firebase
    apns_tokens = [apns_token() for _ in range(3)]
    sandbox_tokens = [apns_token()]
    opted_out = [apns_token(), "tok-celery-out", ios_fcm_tokens[1]]
    providers = dict.fromkeys(apns_tokens, "apns") | dict.fromkeys(sandbox_tokens, "apns_sandbox")
    providers[opted_out[0]] = "apns"
    providers |= dict.fromkeys(ios_fcm_tokens, "fcm")
    for token in fcm_tokens + ios_fcm_tokens + apns_tokens + sandbox_tokens + opted_out[:2]:
        body: dict[str, Any] = {"push_token": token, "push_permission": "granted"}
        if token in providers:
            body |= {"platform": "ios", "os_version": "17.4", "push_provider": providers[token]}
        response = _register(web, app_key, **body)
        assert response.status_code == 201, response.get_json()
        if token not in opted_out:
            web.put(
                "/v1/devices/me/preferences",
                json={"promotional_push": True},
                headers=bearer(response.get_json()["device_token"]),
            )
    env = subprocess_env(
        postgres_url,
        fcm_settings,
        CELERY_BROKER_URL=REDIS_URL,
        CELERY_QUEUE=queue,
        DISPATCH_CHUNK_SIZE="3",
        **{key: str(value) for key, value in apns_settings.items()},
    )
    log = tmp_path / "worker.log"
    worker = start_worker("apns", env, queue, log)
    try:
        campaign_id = web.post(
            "/v1/campaigns",
            json={"name": "n", "category": "promotional", "title": "t", "body": "b"},
            headers=marketing_headers,
        ).get_json()["id"]
        sent = web.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing_headers)
        assert sent.status_code == 202
        wait_for(lambda: campaign_status(celery_app, campaign_id) == "completed", 60, 0.1)
    finally:
        stop(worker)
    assert campaign_status(celery_app, campaign_id) == "completed", log.read_text()
    assert collections.Counter(m.token for m in fcm.received) == collections.Counter(
        dict.fromkeys([*fcm_tokens, ios_fcm_tokens[0]], 1)
    )
    assert collections.Counter(m.token for m in apns.received) == collections.Counter(
        dict.fromkeys(apns_tokens, 1)
    )
    assert [m.token for m in apns_sandbox.received] == sandbox_tokens
    counts = web.get(f"/v1/campaigns/{campaign_id}", headers=marketing_headers).get_json()
    assert (counts["counts"]["sent"], counts["counts"]["suppressed"]) == (
        9,
        {"promotional_opt_out": 3},
    )
