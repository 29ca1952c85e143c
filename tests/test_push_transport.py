"""The push transports, with the real firebase-admin talking to a loopback fake FCM."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal

import firebase_admin
import pytest
import requests
from firebase_admin import messaging

from mobile_api.push import (
    FcmSetupError,
    FcmTransport,
    LogTransport,
    Outcome,
    PushMessage,
    SendResult,
    make_transport,
    mask_token,
    parse_retry_after,
)
from tests.fakes.fcm_server import FakeFcmServer, write_service_account

PROJECT = "fake-project"


@pytest.fixture
def fake() -> Iterator[FakeFcmServer]:
    with FakeFcmServer() as server:
        yield server


@pytest.fixture
def credentials_path(tmp_path: Path, fake: FakeFcmServer) -> str:
    return str(write_service_account(tmp_path / "sa.json", fake, project_id=PROJECT))


@pytest.fixture
def transport(credentials_path: str, fake: FakeFcmServer) -> Iterator[FcmTransport]:
    fcm = FcmTransport(credentials_path, endpoint=fake.url)
    yield fcm
    fcm.close()


def msg(
    token: str,
    data: dict[str, str] | None = None,
    ttl_seconds: int | None = None,
    collapse_key: str | None = None,
    priority: Literal["normal", "high"] = "normal",
) -> PushMessage:
    return PushMessage(
        token,
        "Ticket #42",
        "An agent replied",
        data or {},
        ttl_seconds,
        collapse_key,
        priority,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_success_returns_the_message_ids_fcm_assigned(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    results = transport.send([msg("device-a"), msg("device-b")])

    assigned = {m.token: m.message_id for m in fake.received}
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert [r.message_id for r in results] == [
        assigned["device-a"],
        assigned["device-b"],
    ]
    prefix = f"projects/{PROJECT}/messages/"
    assert all(str(r.message_id).startswith(prefix) for r in results)
    assert all(r.error is None and r.retry_after is None for r in results)


@pytest.mark.parametrize(
    ("kind", "outcome", "error"),
    [
        ("unregistered", Outcome.INVALID_TOKEN, "unregistered"),
        ("sender_id_mismatch", Outcome.INVALID_TOKEN, "sender_id_mismatch"),
        ("quota", Outcome.RETRY, "quota_exceeded"),
        ("unavailable", Outcome.RETRY, "unavailable"),
        ("internal", Outcome.RETRY, "internal"),
        ("invalid_argument", Outcome.FAILED, "invalid_argument"),
        ("third_party_auth", Outcome.FAILED, "third_party_auth_error"),
    ],
)
def test_each_fcm_error_maps_to_its_outcome_and_is_requested_once(
    transport: FcmTransport,
    fake: FakeFcmServer,
    kind: str,
    outcome: Outcome,
    error: str,
) -> None:
    fake.behaviour["tok"] = kind

    [result] = transport.send([msg("tok")])

    assert (result.outcome, result.error, result.message_id) == (outcome, error, None)
    # No urllib3 status retries (500/503) and no google-auth re-send on 401.
    assert fake.attempts["tok"] == 1
    assert fake.token_requests == 1


def test_token_prefixes_choose_the_fake_answer(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    tokens = ["unreg-1", "quota-1", "unavail-1", "invalid-1", "plain-1"]

    results = transport.send([msg(t) for t in tokens])

    assert [r.error for r in results] == [
        "unregistered",
        "quota_exceeded",
        "unavailable",
        "invalid_argument",
        None,
    ]


def test_retry_after_delta_seconds_is_parsed(transport: FcmTransport) -> None:
    [result] = transport.send([msg("quota-device")])

    assert result == SendResult(Outcome.RETRY, "quota_exceeded", 7.0, None)


def test_retry_after_http_date_is_parsed(transport: FcmTransport, fake: FakeFcmServer) -> None:
    fake.quota_retry_after = format_datetime(
        datetime.now(UTC) + timedelta(seconds=120), usegmt=True
    )

    [result] = transport.send([msg("quota-device")])

    assert result.retry_after is not None
    assert 110 <= result.retry_after <= 120


def test_no_retry_after_header_gives_none(transport: FcmTransport, fake: FakeFcmServer) -> None:
    fake.quota_retry_after = None

    [result] = transport.send([msg("quota-device")])

    assert (result.outcome, result.retry_after) == (Outcome.RETRY, None)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("2.5", 2.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
        ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 27, tzinfo=UTC)

    assert parse_retry_after(header, now=now) == expected


def test_order_is_kept_in_a_mixed_batch_of_500(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    prefixes = [
        "",
        "unreg-",
        "quota-",
        "unavail-",
        "invalid-",
        "internal-",
        "mismatch-",
    ]
    expected_errors = [
        None,
        "unregistered",
        "quota_exceeded",
        "unavailable",
        "invalid_argument",
        "internal",
        "sender_id_mismatch",
    ]
    tokens = [f"{prefixes[i * 7 % 11 % 7]}device-{i:03d}" for i in range(500)]

    results = transport.send([msg(t) for t in tokens])

    assigned = {m.token: m.message_id for m in fake.received}
    assert len(results) == 500
    assert fake.request_count == 500
    for i, (token, result) in enumerate(zip(tokens, results, strict=True)):
        assert result.error == expected_errors[i * 7 % 11 % 7], token
        assert result.message_id == assigned[token], token
    assert fake.token_requests == 1


def test_high_priority_message_fields_reach_fcm(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    before = int(time.time())
    message = msg(
        "device-a",
        data={"ticket_id": "42", "kind": "reply"},
        ttl_seconds=3600,
        collapse_key="ticket-42",
        priority="high",
    )

    transport.send([message])

    [received] = fake.received
    body = received.body["message"]
    assert received.project == PROJECT
    assert body["token"] == "device-a"
    assert body["notification"] == {"title": "Ticket #42", "body": "An agent replied"}
    assert body["data"] == {"ticket_id": "42", "kind": "reply"}
    assert body["android"] == {
        "ttl": "3600s",
        "collapse_key": "ticket-42",
        "priority": "high",
    }
    headers = body["apns"]["headers"]
    assert headers["apns-priority"] == "10"
    assert headers["apns-collapse-id"] == "ticket-42"
    assert before + 3600 <= int(headers["apns-expiration"]) <= int(time.time()) + 3600
    assert body["apns"]["payload"]["aps"]["alert"] == {
        "title": "Ticket #42",
        "body": "An agent replied",
    }
    assert "validate_only" not in received.body


def test_normal_priority_message_without_options(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    transport.send([msg("device-a")])

    body = fake.received[0].body["message"]
    assert body["android"] == {"priority": "normal"}
    assert body["apns"]["headers"] == {"apns-priority": "5", "apns-push-type": "alert"}
    assert "data" not in body


def test_zero_ttl_means_now_or_never(transport: FcmTransport, fake: FakeFcmServer) -> None:
    transport.send([msg("device-a", ttl_seconds=0)])

    body = fake.received[0].body["message"]
    assert body["android"]["ttl"] == "0s"
    assert body["apns"]["headers"]["apns-expiration"] == "0"


def test_firebase_admin_request_headers_reach_fcm(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    transport.send([msg("device-a")])

    headers = fake.received[0].headers
    assert headers["authorization"] == "Bearer fake-access-token"
    assert headers["content-type"] == "application/json"
    assert headers["x-goog-api-format-version"] == "2"
    assert headers["x-firebase-client"] == f"fire-admin-python/{firebase_admin.__version__}"
    assert "gl-python/" in headers["x-goog-api-client"]
    assert int(headers["content-length"]) > 0


def test_connections_are_kept_alive_from_batch_to_batch(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    first = transport.send([msg(f"d{i}") for i in range(40)])
    second = transport.send([msg(f"d{i}") for i in range(40)])

    assert {r.outcome for r in first + second} == {Outcome.SENT}
    assert fake.request_count == 80
    # At most one connection per request in flight (40) and the token request's,
    # each kept alive and reused, rather than one per message.
    assert fake.connections <= 41


def test_other_requests_of_the_session_take_the_ordinary_path(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    response = transport._session.request("GET", f"{fake.url}/nothing-here")
    posted = transport._session.request("POST", f"{fake.url}/token", data=b"grant_type=x")

    assert response.status_code == 404
    assert posted.json()["access_token"] == "fake-access-token"
    assert fake.request_count == 0


def test_a_payload_json_cannot_carry_is_refused_before_sending(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    url = f"{fake.url}/v1/projects/{PROJECT}/messages:send"

    with pytest.raises(requests.exceptions.InvalidJSONError):
        transport._session.request("post", url, json={"message": {"ttl": float("nan")}})

    assert fake.request_count == 0


def test_endpoint_and_project_override_redirect_requests(
    credentials_path: str, fake: FakeFcmServer
) -> None:
    fcm = FcmTransport(credentials_path, project_id="other-project", endpoint=fake.url)
    try:
        [result] = fcm.send([msg("device-a")])
    finally:
        fcm.close()

    assert result.outcome is Outcome.SENT
    assert [m.project for m in fake.received] == ["other-project"]
    assert fcm.project_id == "other-project"


def test_project_id_defaults_to_the_credentials_file(transport: FcmTransport) -> None:
    assert transport.project_id == PROJECT


def test_without_endpoint_the_google_url_is_kept(credentials_path: str) -> None:
    fcm = FcmTransport(credentials_path)
    try:
        service = messaging._get_messaging_service(fcm._app)
        assert service._fcm_url == (
            f"https://fcm.googleapis.com/v1/projects/{PROJECT}/messages:send"
        )
    finally:
        fcm.close()


def test_fails_loudly_when_the_url_attribute_moved(
    credentials_path: str, fake: FakeFcmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_init = messaging._MessagingService.__init__

    def moved_init(self: messaging._MessagingService, app: firebase_admin.App) -> None:
        original_init(self, app)
        self._send_url = self.__dict__.pop("_fcm_url")

    monkeypatch.setattr(messaging._MessagingService, "__init__", moved_init)
    apps_before = set(firebase_admin._apps)

    with pytest.raises(FcmSetupError, match="_fcm_url"):
        FcmTransport(credentials_path, endpoint=fake.url)

    assert set(firebase_admin._apps) == apps_before


def test_fails_loudly_when_the_service_getter_is_gone(
    credentials_path: str, fake: FakeFcmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(messaging, "_get_messaging_service")

    with pytest.raises(FcmSetupError):
        FcmTransport(credentials_path, endpoint=fake.url)


def test_fails_loudly_when_the_http_client_changed(
    credentials_path: str, fake: FakeFcmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_init = messaging._MessagingService.__init__

    def other_client(self: messaging._MessagingService, app: firebase_admin.App) -> None:
        original_init(self, app)
        self._client = object()

    monkeypatch.setattr(messaging._MessagingService, "__init__", other_client)

    with pytest.raises(FcmSetupError, match="HTTP client"):
        FcmTransport(credentials_path, endpoint=fake.url)


def test_fail_n_times_then_succeed_needs_the_caller_to_retry(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    fake.fail_times("flaky", 2, "internal")

    outcomes = [transport.send([msg("flaky")])[0].outcome for _ in range(3)]

    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.SENT]
    assert fake.attempts["flaky"] == 3


def test_timeout_is_a_retryable_transport_error(credentials_path: str, fake: FakeFcmServer) -> None:
    fake.delay = 1.0
    fcm = FcmTransport(credentials_path, endpoint=fake.url, timeout=0.2)
    try:
        started = time.monotonic()
        [result] = fcm.send([msg("slow")])
        elapsed = time.monotonic() - started
    finally:
        fcm.close()

    assert (result.outcome, result.error) == (Outcome.RETRY, "transport_error")
    assert elapsed < 0.9
    assert fake.attempts["slow"] == 1


def test_connection_refused_is_a_retryable_transport_error(
    credentials_path: str,
) -> None:
    fcm = FcmTransport(credentials_path, endpoint=f"http://127.0.0.1:{free_port()}")
    try:
        results = fcm.send([msg("a"), msg("b")])
    finally:
        fcm.close()

    assert {(r.outcome, r.error) for r in results} == {(Outcome.RETRY, "transport_error")}


def test_unreachable_token_endpoint_fails_the_batch_as_retryable(
    tmp_path: Path, fake: FakeFcmServer
) -> None:
    path = write_service_account(tmp_path / "sa.json", f"http://127.0.0.1:{free_port()}/token")
    fcm = FcmTransport(str(path), endpoint=fake.url)
    try:
        results = fcm.send([msg("a"), msg("b")])
    finally:
        fcm.close()

    assert {(r.outcome, r.error) for r in results} == {(Outcome.RETRY, "transport_error")}
    assert fake.request_count == 0


def test_one_token_request_per_batch_and_refresh_after_a_rejected_token(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    assert transport.send([msg(f"d{i}") for i in range(50)])[0].outcome is Outcome.SENT
    assert fake.token_requests == 1

    fake.access_token = "rotated-access-token"
    rejected = transport.send([msg(f"d{i}") for i in range(50)])
    again = transport.send([msg(f"d{i}") for i in range(50)])

    assert {(r.outcome, r.error) for r in rejected} == {(Outcome.RETRY, "unauthenticated")}
    assert {r.outcome for r in again} == {Outcome.SENT}
    assert fake.rejected_auth == 50  # google-auth's refresh-and-resend is off
    assert fake.token_requests == 2
    assert fake.attempts["d0"] == 2


def test_a_message_firebase_admin_refuses_fails_alone(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    bad_data: dict[str, Any] = {"count": 3}
    bad = msg("device-b", data=bad_data)

    results = transport.send([msg("device-a"), bad, msg("device-c")])

    assert [(r.outcome, r.error) for r in results] == [
        (Outcome.SENT, None),
        (Outcome.FAILED, "invalid_argument"),
        (Outcome.SENT, None),
    ]
    assert sorted(fake.attempts) == ["device-a", "device-c"]


def test_batch_above_500_is_a_programming_error(
    transport: FcmTransport, fake: FakeFcmServer
) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        transport.send([msg(f"d{i}") for i in range(501)])

    assert transport.send([]) == []
    assert fake.request_count == 0


def test_close_deletes_the_named_app(credentials_path: str, fake: FakeFcmServer) -> None:
    first = FcmTransport(credentials_path, endpoint=fake.url)
    second = FcmTransport(credentials_path, endpoint=fake.url)
    assert first._app.name != second._app.name

    first.close()
    first.close()

    assert first._app.name not in firebase_admin._apps
    assert second.send([msg("device-a")])[0].outcome is Outcome.SENT
    second.close()


def test_log_transport_never_logs_the_whole_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "fcm-registration-token-" + "x" * 120 + "abc123"
    caplog.set_level(logging.INFO, logger="mobile_api.push")
    transport = LogTransport()

    results = transport.send([msg(token, data={"ticket_id": "42"}), msg(token)])

    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert len({r.message_id for r in results}) == 2
    sent_logs = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(sent_logs) == 2
    for record in caplog.records:
        assert record.name == "mobile_api.push"
        assert token[:-6] not in record.getMessage()
    assert "…abc123" in sent_logs[0].getMessage()
    assert "Ticket #42" in sent_logs[0].getMessage()


def test_mask_token_hides_short_tokens_entirely() -> None:
    assert mask_token("short-token") == "…"
    assert mask_token("a-rather-long-token-abcdef") == "…abcdef"


def test_make_transport_without_credentials_is_the_log_transport(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mobile_api.push")

    transport = make_transport(None, None, None)

    assert isinstance(transport, LogTransport)
    assert transport.name == "log"
    assert transport.max_batch == 500
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "not configured" in warning.getMessage()


def test_make_transport_with_credentials_is_fcm(credentials_path: str, fake: FakeFcmServer) -> None:
    transport = make_transport(credentials_path, "made-project", fake.url, timeout=5.0)
    try:
        assert isinstance(transport, FcmTransport)
        assert (transport.name, transport.max_batch) == ("fcm", 500)
        assert transport.send([msg("device-a")])[0].outcome is Outcome.SENT
        assert fake.received[0].project == "made-project"
    finally:
        transport.close()


def test_the_pruned_reasons_are_exactly_the_invalid_token_classifications():
    from mobile_api.push import INVALID_TOKEN_ERRORS, Outcome
    from mobile_api.push.apns import _REASONS
    from mobile_api.push.fcm import _CLASSIFICATION

    dead = {reason for _, outcome, reason in _CLASSIFICATION if outcome == Outcome.INVALID_TOKEN}
    dead |= {reason for outcome, reason in _REASONS.values() if outcome == Outcome.INVALID_TOKEN}
    assert dead == INVALID_TOKEN_ERRORS
