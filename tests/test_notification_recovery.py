"""A crash or an FCM outage loses no notification: the campaigns' guarantees, in their lane.

Windows are scaled down as in test_dispatch_recovery.py: a lease of a second stands
for the default 30 s, an outage of 0.6 s for 30 s and one of 6 s for 5 minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from mobile_api.push import PushMessage
from mobile_api.services import dispatch, notify_dispatch
from mobile_api.worker import Worker
from tests.apns_fixtures import apns, apns_sandbox, apns_settings, ios_device
from tests.campaign_fixtures import (
    Made,
    app,
    assert_handed_over,
    device,
    dispatcher_app,
    drain,
    fcm,
    fcm_settings,
    kill_hard,
    start_dispatcher,
    stop,
    subprocess_env,
    wait_for,
)
from tests.fakes.apns_server import FakeApnsServer
from tests.fakes.fcm_server import FakeFcmServer
from tests.messaging_fixtures import Clock, clock
from tests.notification_fixtures import (
    claimed_deliveries,
    notification_body,
    notification_status,
    notify,
    post_notification,
    ticket_reply,
)

__all__ = [
    "apns",
    "apns_sandbox",
    "apns_settings",
    "app",
    "clock",
    "device",
    "dispatcher_app",
    "fcm",
    "fcm_settings",
    "ios_device",
    "notify",
    "post_notification",
    "ticket_reply",
]

Headers = dict[str, str]
Post = Callable[..., TestResponse]
Make = Callable[..., Made]

LEASE = 1.0  # seconds; DISPATCH_CLAIM_LEASE_SECONDS in production: 30


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
            lambda: notification_status(client, notify, notification_id)["status"] == "completed",
            60,
        )
    finally:
        stop(second)
    assert done, log.read_text()
    # In flight when its dispatcher died: handed over once more at most, with the
    # same Android tag, collapse key and apns-collapse-id.
    assert_handed_over(fcm, tokens, in_flight=tokens)
    assert all(m.identity[0] == notification_id for m in fcm.received)
    assert any(len(fcm.messages_for(str(token))) == 2 for token in tokens)
    counts = notification_status(client, notify, notification_id)["counts"]
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
    [(1.5, "unavailable"), (1.5, "quota"), (6.0, "internal")],
    ids=["30s-unavailable", "30s-quota", "5min-internal"],
)
def test_an_fcm_outage_delays_a_notification_but_loses_nothing(
    dispatcher_app: Callable[..., Flask],
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
    sender = _warmed_up(dispatcher_app(**_outage_settings(fcm_settings)), fcm)
    assert sender.config["PUSH_MAX_ATTEMPTS"] == 0  # retries bounded by time alone
    response = post_notification(notify, notification_body())
    notification_id = response.get_json()["id"]
    started = fcm.clock()
    fcm.outage(outage, kind)
    drain(sender, timeout=outage + 30)
    accepted = [m for m in fcm.received if m.answer == "ok"]
    assert sorted(m.token for m in accepted) == sorted(tokens)  # each once, after the outage
    assert min(m.at for m in accepted) >= started + outage
    assert len(fcm.received) > len(tokens), "FCM refused nothing: no outage was seen"
    counts = notification_status(client, notify, notification_id)["counts"]
    assert (counts["sent"], counts["failed"]) == (4, 0)


def test_retries_end_with_the_notifications_ttl(
    dispatcher_app: Callable[..., Flask],
    fcm_settings: dict[str, Any],
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    """FCM failing for longer than the message may live: retried, then given up, never sent."""
    device(promotional=False, account_id="acct-1")
    # Warmed up: a TTL this short could run out before a cold first hand-off.
    sender = _warmed_up(dispatcher_app(**_outage_settings(fcm_settings)), fcm)
    response = post_notification(notify, notification_body(ttl_seconds=2))
    notification_id = response.get_json()["id"]
    fcm.outage(30.0, "unavailable")
    drain(sender, timeout=20)
    assert len(fcm.received) > 1  # retried, then given up
    (delivery,) = notification_status(client, notify, notification_id)["deliveries"]
    # The last answer came after the TTL ended (failed, with FCM's reason), or the
    # TTL ended before the next retry (not handed over again: expired).
    assert (delivery["status"], delivery["reason"]) in {
        ("failed", "unavailable"),
        ("suppressed", "expired"),
    }


def _retrying_sender(dispatcher_app: Callable[..., Flask], settings: dict[str, Any]) -> Flask:
    """A dispatcher whose retries come 30-60 s after a retryable answer, for a day."""
    return dispatcher_app(
        **{
            **settings,
            "PUSH_RETRY_BASE_SECONDS": 60.0,
            "PUSH_RETRY_MAX_SECONDS": 60.0,
            "PUSH_RETRY_WINDOW_SECONDS": 86400.0,
        }
    )


def test_a_retried_notification_carries_what_is_left_of_its_ttl(
    dispatcher_app: Callable[..., Flask],
    fcm_settings: dict[str, Any],
    apns_settings: dict[str, Any],
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    ios_device: Make,
    fcm: FakeFcmServer,
    apns: FakeApnsServer,
    clock: Clock,
) -> None:
    """The TTL starts when the notification is accepted: a retry 2 minutes on has 2 minutes less."""
    android = device(promotional=False, account_id="acct-1")
    iphone = ios_device(promotional=False, account_id="acct-1")
    fcm.fail_times(str(android.push_token), 1, "unavailable")
    apns.fail_times(str(iphone.push_token), 1, "too_many_requests")
    sender = _retrying_sender(dispatcher_app, {**fcm_settings, **apns_settings})
    accepted = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)
    clock(accepted)
    notification_id = post_notification(notify, notification_body(ttl_seconds=600)).get_json()["id"]
    Worker(sender).run_notifications()  # both refused, retryable: pending again
    (first,) = fcm.messages_for(str(android.push_token))
    assert first.body["message"]["android"]["ttl"] == "600s"
    assert len(apns.messages_for(str(iphone.push_token))) == 1

    clock(accepted + timedelta(seconds=120))
    Worker(sender).run_notifications()
    _, retried = fcm.messages_for(str(android.push_token))
    assert retried.answer == "ok"
    # Accepted a moment after 09:00: less than 120 s of its TTL spent by 09:02.
    assert 478 <= int(retried.body["message"]["android"]["ttl"].rstrip("s")) <= 481
    _, again = apns.messages_for(str(iphone.push_token))
    assert again.status == 200
    # An absolute expiry: the remaining 480 s from the moment it was handed over.
    assert abs(int(again.headers["apns-expiration"]) - (time.time() + 480)) <= 5
    counts = notification_status(client, notify, notification_id)["counts"]
    assert (counts["sent"], counts["failed"], counts["pending"]) == (2, 0, 0)


def test_a_notification_whose_ttl_ran_out_before_its_retry_is_not_sent(
    dispatcher_app: Callable[..., Flask],
    fcm_settings: dict[str, Any],
    client: FlaskClient,
    notify: Headers,
    post_notification: Post,
    device: Make,
    fcm: FakeFcmServer,
    clock: Clock,
) -> None:
    """Its retry comes after the TTL: nothing handed over again, the delivery ends expired."""
    android = device(promotional=False, account_id="acct-1")
    fcm.fail_times(str(android.push_token), 1, "unavailable")
    sender = _retrying_sender(dispatcher_app, fcm_settings)
    accepted = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)
    clock(accepted)
    notification_id = post_notification(notify, notification_body(ttl_seconds=60)).get_json()["id"]
    Worker(sender).run_notifications()
    clock(accepted + timedelta(seconds=61))
    Worker(sender).run_notifications()
    assert [m.answer for m in fcm.messages_for(str(android.push_token))] == ["unavailable"]
    got = notification_status(client, notify, notification_id)
    assert [(d["status"], d["reason"]) for d in got["deliveries"]] == [("suppressed", "expired")]
    assert got["counts"]["suppressed"] == {"expired": 1}


def test_the_send_rate_holds_for_notifications(
    dispatcher_app: Callable[..., Flask],
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
        dispatcher_app(
            **fcm_settings,
            FCM_MAX_MESSAGES_PER_SECOND=25,
            FCM_LIMITER_FILE=str(tmp_path / "fcm-slot"),
        ),
        fcm,
    )
    post_notification(notify, notification_body())
    begun = time.monotonic()
    drain(sender)
    assert_handed_over(fcm, tokens, in_flight=set())
    arrivals = sorted(m.at for m in fcm.received)
    # 20 messages at 25/s in slices of 5: the last slice waits 0.6 s for its slot.
    assert arrivals[-1] - arrivals[0] >= (20 - 5) / 25 - 0.05
    assert time.monotonic() - begun >= 0.55
