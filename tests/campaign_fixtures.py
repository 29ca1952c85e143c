"""Fixtures for campaign and dispatch tests: a loopback FCM server and an app sending to it."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.extensions import db
from mobile_api.push import INVALID_TOKEN_ERRORS
from mobile_api.services import campaigns, is_postgresql
from mobile_api.worker import Worker
from models import (
    AccountTermination,
    Campaign,
    Delivery,
    DeliveryCount,
    DeliveryStatus,
    Device,
    utcnow,
)
from tests.conftest import bearer
from tests.fakes.fcm_server import FakeFcmServer, ReceivedMessage, write_service_account

PROJECT = "fake-project"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fcm() -> Iterator[FakeFcmServer]:
    """A loopback FCM server; retryable errors ask to retry after 0 s."""
    with FakeFcmServer() as server:
        server.quota_retry_after = "0"
        yield server


@pytest.fixture
def fcm_settings(fcm: FakeFcmServer, tmp_path: Path) -> dict[str, Any]:
    """Config pointing the real FCM transport at the loopback server, with quick retries."""
    credentials = write_service_account(tmp_path / "service-account.json", fcm, PROJECT)
    return {
        "FCM_CREDENTIALS": str(credentials),
        "FCM_ENDPOINT": fcm.url,
        "FCM_PROJECT_ID": PROJECT,
        "FCM_TIMEOUT": 5.0,
        "PUSH_RETRY_BASE_SECONDS": 0.01,
        "PUSH_RETRY_MAX_SECONDS": 0.05,
        # Retries for a second at most; the breaker pauses a campaign only briefly.
        "PUSH_RETRY_WINDOW_SECONDS": 1.0,
        "PUSH_BREAKER_MAX_SECONDS": 0.05,
        "DISPATCH_POLL_SECONDS": 0.02,
        "RATELIMIT_ENABLED": False,
    }


@pytest.fixture
def app(app_factory: Callable[..., Flask], fcm_settings: dict[str, Any]) -> Iterator[Flask]:
    """The app under test, sending through firebase-admin to the loopback server."""
    built = app_factory(**fcm_settings)
    yield built
    close_transport(built)


# The retry and breaker defaults scaled by a fiftieth (base 2 s, breaker up to 30 s, retries
# for up to 600 s), for the outage tests, whose outages are scaled alike.
SCALED_OUTAGE_TIMINGS = {
    "PUSH_RETRY_BASE_SECONDS": 0.04,
    "PUSH_RETRY_MAX_SECONDS": 12.0,
    "PUSH_BREAKER_MAX_SECONDS": 0.6,
    "PUSH_RETRY_WINDOW_SECONDS": 60.0,
}


@pytest.fixture
def dispatcher_app(
    app_factory: Callable[..., Flask], fcm_settings: dict[str, Any]
) -> Iterator[Callable[..., Flask]]:
    """Build another dispatcher's app on the test database, sending to the loopback servers.

    The settings are fcm_settings, then each mapping given, then the keywords (the later
    wins). Every app built is closed at teardown.
    """
    built: list[Flask] = []

    def build(*layers: Mapping[str, Any], **overrides: Any) -> Flask:
        settings = dict(fcm_settings)
        for layer in (*layers, overrides):
            settings.update(layer)
        one = app_factory(**settings)
        built.append(one)
        return one

    yield build
    for one in built:
        close_transport(one)


def close_transport(app: Flask) -> None:
    """Release the firebase-admin apps a test built (campaigns' and the notification lane's)."""
    for name in ("push_transport", "push_transport.notifications"):
        push = app.extensions.pop(name, None)
        if push is not None:
            push.close()


@pytest.fixture
def marketing(make_key: Callable[[str], str]) -> dict[str, str]:
    """Authorization header of a marketing key."""
    return bearer(make_key("marketing"))


@pytest.fixture
def admin(make_key: Callable[[str], str]) -> dict[str, str]:
    """Authorization header of an admin key."""
    return bearer(make_key("admin"))


def campaign_body(**overrides: Any) -> dict[str, Any]:
    """A valid promotional campaign body."""
    body: dict[str, Any] = {
        "name": "spring sale",
        "category": "promotional",
        "title": "20% off",
        "body": "Only this week.",
        "data": {"screen": "offers"},
    }
    body.update(overrides)
    return body


@pytest.fixture
def create_campaign(client: FlaskClient, marketing: dict[str, str]) -> Callable[..., str]:
    """Create a draft campaign; returns its id."""

    def create(headers: dict[str, str] | None = None, **overrides: Any) -> str:
        response = client.post(
            "/v1/campaigns", json=campaign_body(**overrides), headers=headers or marketing
        )
        assert response.status_code == 201, response.get_json()
        campaign_id: str = response.get_json()["id"]
        return campaign_id

    return create


class Made(NamedTuple):
    """A registered device: its id, its bearer token and its FCM push token."""

    id: str
    device_token: str
    push_token: str | None


@pytest.fixture
def device(
    register: Callable[..., tuple[dict[str, Any], str]], client: FlaskClient
) -> Callable[..., Made]:
    """Register a device with a push token (opted in unless told)."""

    def make(promotional: bool = True, prefix: str = "tok-", **overrides: Any) -> Made:
        overrides.setdefault("push_token", f"{prefix}{uuid.uuid4().hex}")
        overrides.setdefault("push_permission", "granted")
        body, device_token = register(**overrides)
        if promotional:
            response = client.put(
                "/v1/devices/me/preferences",
                json={"promotional_push": True},
                headers=bearer(device_token),
            )
            assert response.status_code == 200
        return Made(body["id"], device_token, body["push_token"])

    return make


class Sent(NamedTuple):
    """A campaign sent, and the devices registered for it."""

    id: str
    devices: list[Made]

    @property
    def tokens(self) -> set[str | None]:
        """The push tokens of the devices registered for it."""
        return {made.push_token for made in self.devices}


@pytest.fixture
def sent_campaign(
    client: FlaskClient,
    marketing: dict[str, str],
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
) -> Callable[..., Sent]:
    """Register `devices` more opted-in devices, then create a campaign and send it.

    `chunk_size` sets the app's DISPATCH_CHUNK_SIZE; other keywords go to the campaign's
    body. Devices registered before are in its audience too.
    """

    def send(devices: int = 0, *, chunk_size: int | None = None, **overrides: Any) -> Sent:
        if chunk_size is not None:
            client.application.config["DISPATCH_CHUNK_SIZE"] = chunk_size
        made = [device() for _ in range(devices)]
        campaign_id = create_campaign(**overrides)
        post_send(client, marketing, campaign_id)
        return Sent(campaign_id, made)

    return send


def post_send(client: FlaskClient, headers: dict[str, str], campaign_id: str) -> dict[str, Any]:
    """POST /v1/campaigns/{id}/send, which must be accepted; returns the campaign's JSON."""
    response = client.post(f"/v1/campaigns/{campaign_id}/send", headers=headers)
    assert response.status_code == 202, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def update_device(app: Flask, device_id: str, **values: Any) -> None:
    """Change a device's row directly (state other issues' endpoints would set)."""
    with app.app_context():
        db.session.execute(sa.update(Device).where(Device.id == device_id).values(**values))
        db.session.commit()


def terminate_account(app: Flask, account_id: str) -> None:
    """Record an account termination."""
    with app.app_context():
        db.session.add(AccountTermination(account_id=account_id, terminated_at=utcnow()))
        db.session.commit()


def drain(app: Flask, timeout: float = 30.0) -> None:
    """Run the embedded dispatcher until no campaign is queued or sending."""
    worker = Worker(app)
    timer = threading.Timer(timeout, worker.stop)
    timer.start()
    try:
        worker.run(drain=True)
    finally:
        timer.cancel()
    assert not worker._stop.is_set(), "dispatcher did not finish in time"


def deliveries(app: Flask, campaign_id: str) -> dict[str | None, tuple[str, str | None]]:
    """device id → (status, reason) of every delivery of a campaign."""
    with app.app_context():
        rows = db.session.execute(
            sa.select(Delivery.device_id, Delivery.status, Delivery.reason).where(
                Delivery.campaign_id == campaign_id
            )
        ).all()
        db.session.commit()
    return {row.device_id: (row.status, row.reason) for row in rows}


def send_and_drain(
    client: FlaskClient, app: Flask, headers: dict[str, str], campaign_id: str
) -> dict[str, Any]:
    """Send a campaign, run the dispatcher to the end, return the campaign's JSON."""
    post_send(client, headers, campaign_id)
    drain(app)
    body: dict[str, Any] = client.get(f"/v1/campaigns/{campaign_id}", headers=headers).get_json()
    assert_counts_match_rows(app, campaign_id)
    return body


def assert_counts_match_rows(app: Flask, campaign_id: str) -> dict[str, Any]:
    """The campaign's kept counts, and the counts it reports, equal a GROUP BY over its rows.

    Read in one snapshot (one transaction; PostgreSQL: REPEATABLE READ), so it holds
    while dispatchers are at work. Returns the counts the campaign reports.
    """
    with app.app_context():
        if is_postgresql(db.session):
            db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        else:  # pysqlite begins no transaction before a SELECT: each would see its own
            db.session.connection().exec_driver_sql("BEGIN")
        rows = db.session.execute(
            sa.select(Delivery.status, Delivery.reason, sa.func.count())
            .where(Delivery.campaign_id == campaign_id)
            .group_by(Delivery.status, Delivery.reason)
        ).all()
        kept = db.session.execute(
            sa.select(DeliveryCount.status, DeliveryCount.reason, DeliveryCount.n).where(
                DeliveryCount.campaign_id == campaign_id, DeliveryCount.n != 0
            )
        ).all()
        campaign = db.session.get(Campaign, campaign_id)
        assert campaign is not None
        reported = campaigns.counts(db.session, campaign)
        db.session.remove()
    by_state: collections.Counter[tuple[str, str]] = collections.Counter()
    expected: dict[str, Any] = {"sent": 0, "failed": 0, "pending": 0, "invalid_tokens_pruned": 0}
    suppressed: collections.Counter[str] = collections.Counter()
    for status, reason, n in rows:
        if status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING):
            by_state["pending", ""] += n  # one count for both, with no reason
            expected["pending"] += n
            continue
        by_state[status, reason or ""] += n
        if status == DeliveryStatus.SUPPRESSED:
            suppressed[reason] += n
        else:
            expected[status] += n
            if reason in INVALID_TOKEN_ERRORS:
                expected["invalid_tokens_pruned"] += n
    expected["suppressed"] = dict(suppressed)
    assert {(status, reason): n for status, reason, n in kept} == dict(by_state), (kept, rows)
    assert {name: reported[name] for name in expected} == expected
    return reported


def assert_balanced(counts: dict[str, Any]) -> None:
    """targeted = sent + failed + sum(suppressed), nothing pending."""
    assert counts["pending"] == 0
    assert counts["targeted"] == counts["sent"] + counts["failed"] + sum(
        counts["suppressed"].values()
    )


def subprocess_env(database_url: str, settings: dict[str, Any], **extra: str) -> dict[str, str]:
    """Environment for a dispatcher subprocess on the test database."""
    env = dict(os.environ)
    env.update(
        {
            "SECRET_KEY": "test-secret-key",
            "DATABASE_URL": database_url,
            "FCM_CREDENTIALS": settings["FCM_CREDENTIALS"],
            "FCM_ENDPOINT": settings["FCM_ENDPOINT"],
            "FCM_PROJECT_ID": PROJECT,
            "PUSH_RETRY_BASE_SECONDS": "0.01",
            "PUSH_RETRY_MAX_SECONDS": "0.05",
            "PUSH_BREAKER_MAX_SECONDS": "0.05",
            "DISPATCH_POLL_SECONDS": "0.05",
            "LOG_LEVEL": "INFO",
        }
    )
    env.pop("CELERY_BROKER_URL", None)
    env.update(extra)
    return env


def start_dispatcher(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`flask --app wsgi dispatch worker` in a session of its own (so kill -9 takes it all)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "dispatch", "worker"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_hard(process: subprocess.Popen[Any]) -> None:
    """kill -9 the process and everything it started, as a crashed host would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then kill -9 if it does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a stuck process
        kill_hard(process)


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def campaign_status(app: Flask, campaign_id: str) -> str:
    """The campaign's status, read from the database."""
    with app.app_context():
        status = db.session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id))
        db.session.remove()
    return str(status)


def assert_handed_over(
    fcm: FakeFcmServer, tokens: set[str | None], in_flight: set[str | None] | None = None
) -> None:
    """Every token got the message, through one accepted hand-off (the last).

    Tokens in `in_flight` may have been handed over twice, with the same collapse
    identity; every other token exactly once. Nothing else was sent.
    """
    handed: dict[str, list[ReceivedMessage]] = collections.defaultdict(list)
    for message in fcm.received:
        handed[message.token].append(message)
    assert set(handed) == tokens, "a device was missed, or one outside the audience reached"
    for token, copies in handed.items():
        limit = 2 if in_flight is None or token in in_flight else 1
        assert len(copies) <= limit, f"handed over {len(copies)} times"
        assert len({m.identity for m in copies}) == 1, "a second copy with another identity"
        assert copies[-1].answer == "ok"
