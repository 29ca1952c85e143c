"""A crash or an FCM outage loses no notification: the campaigns' guarantees, in their lane.

Windows are scaled down as in test_dispatch_recovery.py: a lease of a second stands
for the default 30 s, an outage of 0.6 s for 30 s and one of 6 s for 5 minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from mobile_api.push import PushMessage
from mobile_api.services import dispatch, notify_dispatch
from tests.campaign_fixtures import (
    Made,
    app,
    assert_handed_over,
    close_transport,
    device,
    drain,
    fcm,
    fcm_settings,
    kill_hard,
    start_dispatcher,
    stop,
    subprocess_env,
    wait_for,
)
from tests.fakes.fcm_server import FakeFcmServer
from tests.notification_fixtures import (
    claimed_deliveries,
    notification_body,
    notify,
    post_notification,
    ticket_reply,
)

__all__ = ["app", "device", "fcm", "fcm_settings", "notify", "post_notification", "ticket_reply"]

Headers = dict[str, str]
Post = Callable[..., TestResponse]
Make = Callable[..., Made]

LEASE = 1.0  # seconds; DISPATCH_CLAIM_LEASE_SECONDS in production: 30


def _status(client: FlaskClient, notify: Headers, notification_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/notifications/{notification_id}", headers=notify)
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def test_a_killed_dispatchers_notification_is_handed_over_again_with_the_same_tag(
    database_url: str,
    fcm_settings: dict[str, Any],
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
    tmp_path: Path,
) -> None:
    """kill -9 while FCM has the message but has not answered; another dispatcher sends it."""
    app = client.application
    tokens = {device(promotional=False, account_id="acct-1").push_token for _ in range(3)}
    fcm.delay = 3.0  # the answer comes long after the kill
    env = subprocess_env(database_url, fcm_settings, DISPATCH_CLAIM_LEASE_SECONDS=str(LEASE))
    first = start_dispatcher(env, tmp_path / "first.log")
    try:
        response = post_notification(notify, notification_body())
        assert response.status_code == 202, response.get_json()
        notification_id = response.get_json()["id"]
        assert wait_for(lambda: len(fcm.received) >= 1, 30), (tmp_path / "first.log").read_text()
    finally:
        kill_hard(first)
    assert claimed_deliveries(app) == 3, "killed before or after the hand-off, not during it"
    fcm.delay = 0.0

    log = tmp_path / "second.log"
    second = start_dispatcher(env, log)
    try:
        done = wait_for(
            lambda: _status(client, notify, notification_id)["status"] == "completed", 60
        )
    finally:
        stop(second)
    assert done, log.read_text()
    # In flight when its dispatcher died: handed over once more at most, with the
    # same Android tag, collapse key and apns-collapse-id.
    assert_handed_over(fcm, tokens, in_flight=tokens)
    assert all(m.identity[0] == notification_id for m in fcm.received)
    assert any(len(fcm.messages_for(str(token))) == 2 for token in tokens)
    counts = _status(client, notify, notification_id)["counts"]
    assert (counts["sent"], counts["failed"], counts["pending"]) == (3, 0, 0)


def _warmed_up(app: Flask, fcm: FakeFcmServer) -> Flask:
    """The app with its notification transport built and its access token fetched.

    So what a test times (an outage, the send rate) starts with the notification's
    first request, not while firebase-admin is still starting.
    """
    with app.app_context():
        dispatch.transport(app, notify_dispatch.LANE).send(
            [PushMessage(token="warm-up", title="t", body="b")]
        )
    fcm.reset()
    return app


def _outage_settings(fcm_settings: dict[str, Any]) -> dict[str, Any]:
    # The defaults scaled by a fiftieth; PUSH_MAX_ATTEMPTS left unset (no count limit).
    return {
        **fcm_settings,
        "PUSH_RETRY_BASE_SECONDS": 0.04,
        "PUSH_RETRY_MAX_SECONDS": 1.0,
        "PUSH_RETRY_WINDOW_SECONDS": 60.0,
    }


@pytest.mark.parametrize(
    ("outage", "kind"),
    [(0.6, "unavailable"), (0.6, "quota"), (6.0, "internal")],
    ids=["30s-unavailable", "30s-quota", "5min-internal"],
)
def test_an_fcm_outage_delays_a_notification_but_loses_nothing(
    app_factory: Callable[..., Flask],
    fcm_settings: dict[str, Any],
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
    outage: float,
    kind: str,
) -> None:
    tokens = {device(promotional=False, account_id="acct-1").push_token for _ in range(4)}
    sender = _warmed_up(app_factory(**_outage_settings(fcm_settings)), fcm)
    assert sender.config["PUSH_MAX_ATTEMPTS"] == 0  # retries bounded by time alone
    response = post_notification(notify, notification_body())
    notification_id = response.get_json()["id"]
    started = fcm.clock()
    fcm.outage(outage, kind)
    try:
        drain(sender, timeout=outage + 30)
    finally:
        close_transport(sender)
    accepted = [m for m in fcm.received if m.answer == "ok"]
    assert sorted(m.token for m in accepted) == sorted(tokens)  # each once, after the outage
    assert min(m.at for m in accepted) >= started + outage
    assert len(fcm.received) > len(tokens), "FCM refused nothing: no outage was seen"
    counts = _status(client, notify, notification_id)["counts"]
    assert (counts["sent"], counts["failed"]) == (4, 0)


def test_retries_end_with_the_notifications_ttl(
    app_factory: Callable[..., Flask],
    fcm_settings: dict[str, Any],
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    """FCM failing for longer than the message may live: failed with the last reason."""
    device(promotional=False, account_id="acct-1")
    sender = app_factory(**_outage_settings(fcm_settings))
    response = post_notification(notify, notification_body(ttl_seconds=1))
    notification_id = response.get_json()["id"]
    fcm.outage(30.0, "unavailable")
    try:
        drain(sender, timeout=20)
    finally:
        close_transport(sender)
    assert len(fcm.received) > 1  # retried, then given up
    got = _status(client, notify, notification_id)
    assert got["counts"]["failed"] == 1
    assert [d["reason"] for d in got["deliveries"]] == ["unavailable"]


def test_the_send_rate_holds_for_notifications(
    app_factory: Callable[..., Flask],
    fcm_settings: dict[str, Any],
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
    tmp_path: Path,
) -> None:
    """FCM_MAX_MESSAGES_PER_SECOND is the deployment's: notifications wait for slots too."""
    tokens = {device(promotional=False, account_id="acct-1").push_token for _ in range(20)}
    sender = _warmed_up(
        app_factory(
            **fcm_settings,
            FCM_MAX_MESSAGES_PER_SECOND=25,
            FCM_LIMITER_FILE=str(tmp_path / "fcm-slot"),
        ),
        fcm,
    )
    post_notification(notify, notification_body())
    begun = time.monotonic()
    try:
        drain(sender)
    finally:
        close_transport(sender)
    assert_handed_over(fcm, tokens, in_flight=set())
    arrivals = sorted(m.at for m in fcm.received)
    # 20 messages at 25/s in slices of 5: the last slice waits 0.6 s for its slot.
    assert arrivals[-1] - arrivals[0] >= (20 - 5) / 25 - 0.05
    assert time.monotonic() - begun >= 0.55
