"""The circuit breaker per push provider: an APNs outage holds APNs deliveries only, in every lane.

Windows scaled down as in test_dispatch_recovery.py (breaker up to 0.6 s for 30 s).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from mobile_api.extensions import db
from mobile_api.services import dispatch, notify_dispatch
from models import NotificationDelivery, PushBreaker
from tests.apns_fixtures import apns, apns_sandbox, apns_settings, ios_device
from tests.campaign_fixtures import (
    SCALED_OUTAGE_TIMINGS,
    Made,
    Sent,
    assert_balanced,
    create_campaign,
    device,
    dispatcher_app,
    drain,
    fcm,
    fcm_settings,
    marketing,
    sent_campaign,
    wait_for,
)
from tests.fakes.apns_server import FakeApnsServer
from tests.fakes.fcm_server import FakeFcmServer
from tests.notification_fixtures import notification_body, notify, post_notification, ticket_reply

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
    "notify",
    "post_notification",
    "sent_campaign",
    "ticket_reply",
]

Headers = dict[str, str]
Make = Callable[..., Made]
Send = Callable[..., Sent]


@pytest.fixture
def build_sender(
    dispatcher_app: Callable[..., Flask], apns_settings: dict[str, Any]
) -> Callable[..., Flask]:
    """Build a dispatcher's app for both providers, the outage timings scaled by a fiftieth."""
    return functools.partial(
        dispatcher_app, apns_settings, SCALED_OUTAGE_TIMINGS, DISPATCH_CHUNK_SIZE=5
    )


def _accepted_once(tokens: set[str | None], accepted: list[str]) -> None:
    assert collections.Counter(accepted) == collections.Counter(dict.fromkeys(tokens, 1))


def test_an_apns_outage_holds_apns_devices_while_fcm_ones_receive(
    build_sender: Callable[..., Flask],
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    ios_device: Make,
    fcm: FakeFcmServer,
    apns: FakeApnsServer,
) -> None:
    # APNs devices first: the first chunks are all APNs, and trip its breaker.
    ios = {ios_device().push_token for _ in range(10)}
    campaign_id, made = sent_campaign(devices=10)
    android = {d.push_token for d in made}
    outage = 4.0
    started = apns.clock()
    apns.outage(outage, "unavailable")
    drain(build_sender(), timeout=outage + 30)

    fcm_ok = [m for m in fcm.received if m.answer == "ok"]
    _accepted_once(android, [m.token for m in fcm_ok])
    # FCM's devices did not wait for Apple: all received while APNs was down.
    assert max(m.at for m in fcm_ok) < started + outage
    apns_ok = [m for m in apns.received if m.status == 200]
    _accepted_once(ios, [m.token for m in apns_ok])
    assert min(m.at for m in apns_ok) >= started + outage
    # Held, not retried one by one: the first chunk, then single probes.
    during = sum(1 for m in apns.received if started <= m.at < started + outage)
    assert during <= 5 + 10 + outage / 0.3, during
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert (counts["sent"], counts["failed"]) == (20, 0)
    assert_balanced(counts)


def _held(app: Flask) -> list[tuple[str, str | None]]:
    with app.app_context():
        rows = db.session.execute(
            sa.select(NotificationDelivery.status, NotificationDelivery.reason)
        ).all()
        db.session.remove()
    return [(row.status, row.reason) for row in rows]


def _apns_breaker_open(app: Flask) -> bool:
    with app.app_context():
        trips = db.session.scalar(
            sa.select(PushBreaker.trips).where(PushBreaker.provider == "apns")
        )
        db.session.remove()
    return bool(trips)


def test_a_notification_waits_for_the_breaker_a_campaign_opened(
    build_sender: Callable[..., Flask],
    notify: Headers,
    post_notification: Callable[..., TestResponse],
    sent_campaign: Send,
    device: Make,
    ios_device: Make,
    fcm: FakeFcmServer,
    apns: FakeApnsServer,
) -> None:
    for _ in range(5):
        ios_device()
    campaign_id = sent_campaign().id
    # A breaker wait of 2-4 s: long enough to look at a notification held by it.
    sender = build_sender(PUSH_RETRY_BASE_SECONDS=4.0, PUSH_BREAKER_MAX_SECONDS=4.0)
    apns.outage(3.0, "unavailable")
    with sender.app_context():
        settings = dispatch.Settings.from_config(sender.config)
        push = dispatch.transport(sender)
        dispatch.run_campaign(db.session, push, campaign_id, settings, max_chunks=2)
        db.session.remove()
    assert _apns_breaker_open(sender)
    received = len(apns.received)

    # A transactional notification to an APNs and an FCM device of one account.
    iphone = ios_device(promotional=False, account_id="acct-1")
    pixel = device(promotional=False, account_id="acct-1")
    response = post_notification(notify, notification_body())
    assert response.status_code == 202, response.get_json()
    with sender.app_context():
        notify_dispatch.send_due(
            db.session, dispatch.transport(sender, notify_dispatch.LANE), settings
        )
        db.session.remove()
    assert [m.token for m in fcm.received] == [pixel.push_token]  # FCM goes on
    assert len(apns.received) == received  # nothing more went to Apple
    assert ("pending", "breaker_open") in _held(sender)

    drain(sender, timeout=40)
    assert sorted(_held(sender)) == [("sent", None)] * 2
    assert [m.token for m in apns.received if m.status == 200].count(iphone.push_token) == 1
    assert [m.token for m in fcm.received].count(pixel.push_token) == 1
    assert wait_for(lambda: not _apns_breaker_open(sender), 1)
