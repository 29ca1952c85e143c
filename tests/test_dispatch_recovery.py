"""A crash or an FCM outage loses no message: kill -9 of the embedded dispatcher, outages, rate.

Windows are scaled down so the suite stays fast: a lease of a second stands for the
default 30 s, an outage of 0.6 s for 30 s and one of 6 s for 5 minutes (a fiftieth),
with the retry and breaker timings scaled alike. The real-time 5-minute outage runs
in bench/dispatch_outage.py.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.extensions import db
from mobile_api.push import PushMessage
from mobile_api.services import dispatch
from models import Delivery, DeliveryStatus, Device
from tests.campaign_fixtures import (
    SCALED_OUTAGE_TIMINGS,
    Made,
    Sent,
    app,
    assert_balanced,
    assert_counts_match_rows,
    assert_handed_over,
    campaign_status,
    create_campaign,
    device,
    dispatcher_app,
    drain,
    fcm,
    fcm_settings,
    kill_hard,
    marketing,
    sent_campaign,
    start_dispatcher,
    stop,
    subprocess_env,
    wait_for,
)
from tests.conftest import REDIS_DEFAULT
from tests.fakes.fcm_server import FakeFcmServer
from tests.messaging_fixtures import race

__all__ = [
    "app",
    "create_campaign",
    "device",
    "dispatcher_app",
    "fcm",
    "fcm_settings",
    "marketing",
    "sent_campaign",
]

Headers = dict[str, str]
Make = Callable[..., Made]
Send = Callable[..., Sent]

REDIS_URL = os.environ.get("TEST_REDIS_URL", REDIS_DEFAULT)
LEASE = 1.0  # seconds; DISPATCH_CLAIM_LEASE_SECONDS in production: 30


def _in_hand(app: Flask, campaign_id: str) -> tuple[set[str], set[str]]:
    """Push tokens of the rows a dead dispatcher holds: (claimed only, handed over)."""
    with app.app_context():
        rows = db.session.execute(
            sa.select(Device.push_token, Delivery.handed_at)
            .join(Device, Device.id == Delivery.device_id)
            .where(
                Delivery.campaign_id == campaign_id,
                Delivery.status == DeliveryStatus.SENDING,
            )
        ).all()
        db.session.remove()
    claimed = {str(row.push_token) for row in rows if row.handed_at is None}
    handed = {str(row.push_token) for row in rows if row.handed_at is not None}
    return claimed, handed


@pytest.mark.parametrize("rate", [None, 40], ids=["unlimited", "rate-limited"])
def test_a_killed_dispatchers_chunk_is_sent_by_another_within_the_lease(
    database_url: str,
    fcm_settings: dict[str, Any],
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    device: Make,
    fcm: FakeFcmServer,
    tmp_path: Path,
    rate: int | None,
) -> None:
    """kill -9 mid-chunk; a second `dispatch worker` sends what was left, once more at most.

    Rate-limited, the dead dispatcher's chunk waits for send slots slice by slice, so
    it holds rows it claimed but never handed over: those are sent exactly once.
    """
    app = client.application
    opted_out = device(promotional=False)
    campaign_id, made = sent_campaign(devices=40)
    fcm.delay = 0.2  # a chunk is in flight for most of its cycle
    extra = {"DISPATCH_CHUNK_SIZE": "10", "DISPATCH_CLAIM_LEASE_SECONDS": str(LEASE)}
    if rate:
        extra.update(
            FCM_MAX_MESSAGES_PER_SECOND=str(rate), FCM_LIMITER_FILE=str(tmp_path / "fcm-slot")
        )
    env = subprocess_env(database_url, fcm_settings, **extra)
    first = start_dispatcher(env, tmp_path / "first.log")
    try:
        assert wait_for(lambda: len(fcm.received) >= 13, 30), "the dispatcher never sent"
    finally:
        kill_hard(first)
    killed_at = time.monotonic()
    claimed, handed = _in_hand(app, campaign_id)
    assert handed, "killed between chunks: nothing was in flight"
    assert_counts_match_rows(app, campaign_id)  # the dead one's chunk counts as pending
    if rate:
        assert claimed, "killed after its whole chunk was handed over"

    log = tmp_path / "second.log"
    second = start_dispatcher(env, log)
    try:
        assert wait_for(lambda: "push transport" in log.read_text(), 60), log.read_text()
        ready_at = time.monotonic()
        done = wait_for(lambda: campaign_status(app, campaign_id) == "completed", 60)
        done_at = time.monotonic()
    finally:
        stop(second)
    assert done, log.read_text()
    # Once the other dispatcher is up, within the lease and a few polls (scaled: as
    # 60 s is for the default lease of 30 s), however long its start-up took.
    assert done_at - max(ready_at, killed_at + LEASE) < LEASE + 3
    assert_handed_over(fcm, {d.push_token for d in made}, in_flight=handed)
    assert opted_out.push_token not in {m.token for m in fcm.received}
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert (counts["targeted"], counts["sent"], counts["failed"]) == (41, 40, 0)
    assert counts["suppressed"] == {"promotional_opt_out": 1}
    assert_balanced(counts)
    assert_counts_match_rows(app, campaign_id)


def test_consent_withdrawn_after_a_crash_is_honoured_at_the_second_hand_off(
    client: FlaskClient, marketing: Headers, sent_campaign: Send, fcm: FakeFcmServer
) -> None:
    """A chunk in flight when its dispatcher died: the opt-out in between is read again."""
    app = client.application
    campaign_id, (stays, leaves) = sent_campaign(devices=2)
    _die_mid_hand_off(app, campaign_id)
    client.put(
        "/v1/devices/me/preferences",
        json={"promotional_push": False},
        headers={"Authorization": f"Bearer {leaves.device_token}"},
    )
    app.config["DISPATCH_CLAIM_LEASE_SECONDS"] = 0.0  # the lease has lapsed
    drain(app)
    assert len(fcm.messages_for(str(stays.push_token))) == 2
    assert len(fcm.messages_for(str(leaves.push_token))) == 1
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert (counts["sent"], counts["suppressed"]) == (1, {"promotional_opt_out": 1})
    assert_balanced(counts)
    assert_counts_match_rows(app, campaign_id)


def _die_mid_hand_off(app: Flask, campaign_id: str) -> None:
    """Claim and hand over the first chunk, then die before recording any answer."""
    settings = dispatch.Settings.from_config(app.config)
    with app.app_context():
        push = dispatch.transport(app)

        class DiesMidHandOff:
            name = "dies"
            max_batch = push.max_batch

            def send(self, messages: list[Any]) -> list[Any]:
                push.send(messages)
                raise SystemExit  # the answers are never recorded

            def close(self) -> None:
                push.close()

        dispatch.enumerate_batch(db.session, campaign_id, settings)
        with pytest.raises(SystemExit):
            dispatch.process_chunk(db.session, DiesMidHandOff(), campaign_id, settings)
        db.session.remove()
    assert_counts_match_rows(app, campaign_id)


def test_a_cancelled_campaign_sends_nothing_again_after_a_crash(
    client: FlaskClient, marketing: Headers, sent_campaign: Send, fcm: FakeFcmServer
) -> None:
    app = client.application
    campaign_id = sent_campaign(devices=5, chunk_size=2).id
    _die_mid_hand_off(app, campaign_id)
    assert client.post(f"/v1/campaigns/{campaign_id}/cancel", headers=marketing).status_code == 200
    assert_counts_match_rows(app, campaign_id)
    app.config["DISPATCH_CLAIM_LEASE_SECONDS"] = 0.0
    drain(app)
    assert_counts_match_rows(app, campaign_id)
    assert len(fcm.received) == 2
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    # What became of the two in flight is unknown: failed, interrupted; not sent again.
    assert (counts["sent"], counts["failed"]) == (0, 2)
    assert counts["suppressed"] == {"cancelled": 3}
    assert_balanced(counts)
    with app.app_context():
        reasons = db.session.scalars(
            sa.select(Delivery.reason).where(Delivery.status == DeliveryStatus.FAILED)
        ).all()
        db.session.remove()
    assert reasons == ["interrupted", "interrupted"]


def test_a_live_dispatchers_lease_is_renewed_during_a_long_hand_off(
    dispatcher_app: Callable[..., Flask],
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    fcm: FakeFcmServer,
) -> None:
    """A hand-off slower than the lease is not taken over by a second dispatcher."""
    sent = sent_campaign(devices=4)
    slow, other = (dispatcher_app(DISPATCH_CLAIM_LEASE_SECONDS=0.3) for _ in range(2))
    fcm.delay = 1.0  # FCM answers after three leases
    thread = threading.Thread(target=drain, args=(slow,))
    thread.start()
    try:
        assert wait_for(lambda: len(fcm.received) == 4, 10)
        drain(other)  # polls while the first hand-off is still waiting for FCM
    finally:
        thread.join()
    assert_handed_over(fcm, sent.tokens, in_flight=set())
    counts = client.get(f"/v1/campaigns/{sent.id}", headers=marketing).get_json()["counts"]
    assert (counts["sent"], counts["failed"]) == (4, 0)


@pytest.fixture
def outage_sender(dispatcher_app: Callable[..., Flask], fcm: FakeFcmServer) -> Flask:
    """A dispatcher with the outage timings, its transport built and its access token
    fetched, the fake reset.

    So a scripted outage starts when the campaign's first request is made, not
    while firebase-admin is still starting (slow on a loaded machine).
    """
    app = dispatcher_app(SCALED_OUTAGE_TIMINGS, DISPATCH_CHUNK_SIZE=20)
    with app.app_context():
        dispatch.transport(app).send([PushMessage(token="warm-up", title="t", body="b")])
    fcm.reset()
    return app


@pytest.mark.parametrize(
    ("outage", "kind"),
    [(0.6, "unavailable"), (0.6, "internal"), (0.6, "quota"), (6.0, "unavailable")],
    ids=["30s-unavailable", "30s-internal", "30s-quota", "5min-unavailable"],
)
def test_an_fcm_outage_loses_nothing_and_the_campaign_backs_off_as_a_whole(
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    outage_sender: Flask,
    fcm: FakeFcmServer,
    outage: float,
    kind: str,
) -> None:
    sent = sent_campaign(devices=60)
    started = fcm.clock()
    fcm.outage(outage, kind)
    drain(outage_sender, timeout=outage + 30)

    accepted = collections.Counter(m.token for m in fcm.received if m.answer == "ok")
    assert accepted == collections.Counter(dict.fromkeys(sent.tokens, 1))
    counts = client.get(f"/v1/campaigns/{sent.id}", headers=marketing).get_json()["counts"]
    assert (counts["sent"], counts["failed"]) == (60, 0)
    assert_balanced(counts)
    # Backing off as a whole: the first chunk, then single probes at a widening
    # interval (from 0.02 s to the breaker's 0.3-0.6 s), not every device
    # retrying on its own.
    during = fcm.requests_between(started, started + outage)
    assert during <= 20 + 10 + outage / 0.3, during
    # And it resumed on its own, within one breaker wait of the end of the outage
    # (and a second's slack for a loaded machine: without the probe it would wait for
    # the retry schedule, up to 12 s here).
    first_ok = min(m.at for m in fcm.received if m.answer == "ok")
    assert first_ok - (started + outage) < 0.6 + 1.0


def test_the_breaker_waits_at_least_as_long_as_retry_after(
    sent_campaign: Send, outage_sender: Flask, fcm: FakeFcmServer
) -> None:
    sent_campaign(devices=5)
    fcm.outage_retry_after = "1"
    fcm.outage(2.5, "unavailable")
    drain(outage_sender)
    # Rounds of hand-offs, each FCM's Retry-After after the one before: the chunk
    # of five, failing; single probes, failing while the outage lasts; then one
    # that gets through, and the other four behind it (how soon behind is up to
    # the machine's load, so the successes are not grouped by time).
    received = sorted(fcm.received, key=lambda m: m.at)
    accepted = [m for m in received if m.answer == "ok"]
    refused = [m for m in received if m.answer != "ok"]
    assert len(accepted) == 5 and accepted[0].at > refused[-1].at
    rounds: list[list[Any]] = []
    for message in refused:
        if not rounds or message.at - rounds[-1][-1].at > 0.5:
            rounds.append([])
        rounds[-1].append(message)
    assert [m.answer for m in rounds[0]] == ["unavailable"] * 5
    assert len(rounds) >= 2
    for probe in rounds[1:]:
        assert [m.answer for m in probe] == ["unavailable"]
    for before, after in itertools.pairwise([*rounds, accepted[:1]]):
        assert after[0].at - before[-1].at >= 1.0 - 0.05


@pytest.mark.parametrize("shared_through", ["file", "redis"])
def test_a_send_rate_is_shared_by_every_dispatcher(
    dispatcher_app: Callable[..., Flask],
    sent_campaign: Send,
    fcm: FakeFcmServer,
    tmp_path: Path,
    shared_through: str,
) -> None:
    """FCM_MAX_MESSAGES_PER_SECOND holds for two dispatchers together (slot file or Redis)."""
    sent = sent_campaign(devices=50)
    settings = {
        "DISPATCH_CHUNK_SIZE": 10,
        "FCM_MAX_MESSAGES_PER_SECOND": 50,
        "FCM_LIMITER_FILE": str(tmp_path / "fcm-slot"),
    }
    if shared_through == "redis":
        # Each its own slot file: only Redis can hold them to one rate.
        settings.update(REDIS_URL=REDIS_URL, CELERY_QUEUE=f"test-{uuid.uuid4().hex[:12]}")
    apps = [
        dispatcher_app(settings, FCM_LIMITER_FILE=str(tmp_path / f"fcm-slot-{i}"))
        if shared_through == "redis"
        else dispatcher_app(settings)
        for i in range(2)
    ]
    started = fcm.clock()
    race(*(functools.partial(drain, one) for one in apps))
    assert_handed_over(fcm, sent.tokens, in_flight=set())
    arrivals = sorted(m.at for m in fcm.received)
    # 50 messages at 50/s in slices of 10, whoever sent them: the first slice at once,
    # the fifth no sooner than 0.8 s after the first slot, which came after the start.
    # (Measured from the start, not from the first arrival, which a loaded machine
    # may delay while the transport connects.)
    assert arrivals[-1] - started >= (50 - 10) / 50
    # No burst above the rate: messages 20 apart span at least one slot, less a tenth
    # of a second of a loaded machine's jitter at the fake.
    jitter = 0.1
    for index in range(len(arrivals) - 20):
        assert arrivals[index + 20] - arrivals[index] >= 10 / 50 - jitter
