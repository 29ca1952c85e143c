"""Fixtures for notification tests: notify keys, a transactional category, posting helpers."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from mobile_api.extensions import db
from models import DeliveryStatus, NotificationDelivery
from tests.campaign_fixtures import subprocess_env
from tests.conftest import bearer

ROOT = Path(__file__).resolve().parent.parent

TRANSACTIONAL = "ticket_reply"
TICKET_REPLY = {
    "name": "Replies to your tickets",
    "kind": "transactional",
    "default_enabled": True,
    "android_channel_id": "tickets",
    "ios_interruption_level": "time-sensitive",
}


@pytest.fixture
def notify(make_key: Callable[[str], str]) -> dict[str, str]:
    """Authorization header of a notify key (the helpdesk backend)."""
    return bearer(make_key("notify"))


def notification_body(**overrides: Any) -> dict[str, Any]:
    """A valid notification body to an account (give device_ids=[...] to target devices)."""
    body: dict[str, Any] = {
        "category_key": TRANSACTIONAL,
        "account_id": "acct-1",
        "title": "An agent answered",
        "body": "Ticket #42 has a new reply.",
        "data": {"ticket": "42"},
    }
    if "device_ids" in overrides:
        body.pop("account_id")
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def idempotency_key() -> str:
    """A fresh Idempotency-Key."""
    return f"idem-{uuid.uuid4().hex}"


def put_category(client: FlaskClient, admin: dict[str, str], key: str, **settings: Any) -> None:
    """Create or update a notification category (admin)."""
    response = client.put(f"/v1/admin/categories/{key}", json=settings, headers=admin)
    assert response.status_code in (200, 201), response.get_json()


@pytest.fixture
def ticket_reply(client: FlaskClient, make_key: Callable[[str], str]) -> str:
    """The transactional category ticket_reply (on by default); its key."""
    put_category(client, bearer(make_key("admin")), TRANSACTIONAL, **TICKET_REPLY)
    return TRANSACTIONAL


@pytest.fixture
def post_notification(client: FlaskClient, ticket_reply: str) -> Callable[..., TestResponse]:
    """POST /v1/notifications with a body and headers (and an Idempotency-Key if given)."""

    def post(headers: dict[str, str], body: dict[str, Any], key: str | None = None) -> TestResponse:
        all_headers = dict(headers)
        if key is not None:
            all_headers["Idempotency-Key"] = key
        return client.post("/v1/notifications", json=body, headers=all_headers)

    return post


def notification_status(
    client: FlaskClient, headers: dict[str, str], notification_id: str
) -> dict[str, Any]:
    """GET /v1/notifications/<id>: its status, counts and deliveries (the read must succeed)."""
    response = client.get(f"/v1/notifications/{notification_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def claimed_deliveries(app: Flask) -> int:
    """How many notification deliveries a dispatcher holds claimed (being handed over)."""
    with app.app_context():
        count = db.session.scalar(
            sa.select(sa.func.count()).where(NotificationDelivery.status == DeliveryStatus.SENDING)
        )
        db.session.remove()
    return int(count or 0)


class LiveServer(NamedTuple):
    """A gunicorn serving the app: its URL, and its access log (worker pid, method, status)."""

    url: str
    access_log: Path

    def answered(self) -> int:
        """How many requests have been answered (a mark for `pids(after=…)`)."""
        return len(self.access_log.read_text().splitlines())

    def pids(self, method: str, after: int = 0) -> set[str]:
        """The worker processes that answered requests of `method` (those after the mark)."""
        lines = self.access_log.read_text().splitlines()[after:]
        return {line.split()[0] for line in lines if line.split()[1:2] == [method]}


@pytest.fixture
def live_server(
    app: Flask, database_url: str, fcm_settings: dict[str, Any], tmp_path: Path
) -> Iterator[LiveServer]:
    """The app served by gunicorn with two worker processes on the test database."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = subprocess_env(database_url, fcm_settings, RATELIMIT_ENABLED="false")
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--access-logfile",
            str(tmp_path / "access.log"),
            "--access-logformat",
            "%(p)s %(m)s %(s)s",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    served = LiveServer(f"http://127.0.0.1:{port}", tmp_path / "access.log")
    try:
        deadline = time.monotonic() + 60
        # Until both workers have answered: each has booted and takes requests.
        while not (served.access_log.exists() and len(served.pids("GET")) == 2):
            with contextlib.suppress(requests.RequestException):  # still starting
                requests.get(f"{served.url}/healthz", timeout=5)
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not start two workers"
            time.sleep(0.02)
        yield served
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
