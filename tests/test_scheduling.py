"""Scheduled and local-time campaigns, quiet hours and frequency caps, on the wire.

firebase-admin sends to the loopback FCM server; the service's clock is moved
(models.base.travel_to) instead of sleeping.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mobile_api import tasks
from mobile_api.extensions import db
from mobile_api.services import dispatch
from tests.campaign_fixtures import (
    Made,
    Sent,
    admin,
    app,
    assert_counts_match_rows,
    create_campaign,
    deliveries,
    device,
    dispatcher_app,
    drain,
    fcm,
    fcm_settings,
    marketing,
    post_send,
    sent_campaign,
)
from tests.conftest import bearer
from tests.fakes.fcm_server import FakeFcmServer
from tests.messaging_fixtures import Clock, clock, race, run_passes

__all__ = [
    "admin",
    "app",
    "clock",
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
LocalTimeCampaign = Callable[[], tuple[str, dict[str | None, Made]]]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ttl_of(fcm: FakeFcmServer, made: Made) -> int:
    (message,) = fcm.messages_for(made.push_token)
    return int(message.body["message"]["android"]["ttl"].rstrip("s"))


# Waves of "09:00 local" sent on 14 March 2027, the day the US springs forward.
ZONES = {
    "Asia/Tokyo": at("2027-03-14T00:00"),
    "Asia/Kolkata": at("2027-03-14T03:30"),
    "Europe/London": at("2027-03-14T09:00"),
    "America/New_York": at("2027-03-14T13:00"),  # EDT from 07:00 UTC that day
    "America/Los_Angeles": at("2027-03-14T16:00"),
    None: at("2027-03-14T22:00"),  # no timezone: fallback Sydney, next morning there
}


@pytest.fixture
def local_time_campaign(
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    clock: Clock,
) -> LocalTimeCampaign:
    """At 20:00 UTC on 13 March: a device in each zone, and "09:00 local" on the 14th sent.

    Returns the campaign's id and the devices by zone.
    """

    def send() -> tuple[str, dict[str | None, Made]]:
        clock(at("2027-03-13T20:00"))
        made = {zone: device(timezone=zone) for zone in ZONES}
        campaign_id = create_campaign(
            local_time="09:00", send_at="2027-03-14T00:00:00Z", fallback_timezone="Australia/Sydney"
        )
        assert post_send(client, marketing, campaign_id)["status"] == "scheduled"
        return campaign_id, made

    return send


def test_a_local_time_campaign_reaches_each_zone_at_its_nine_oclock(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    local_time_campaign: LocalTimeCampaign,
    fcm: FakeFcmServer,
    clock: Clock,
) -> None:
    campaign_id, made = local_time_campaign()
    run_passes(app)  # enumerates: targeted is fixed now, nothing is due
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert (body["status"], body["counts"]["targeted"], body["counts"]["pending"]) == (
        "scheduled",
        6,
        6,
    )
    assert fcm.received == []
    got: set[str | None] = set()
    for zone, due in sorted(ZONES.items(), key=lambda item: item[1]):
        clock(due.replace(second=30))
        run_passes(app)
        got.add(zone)
        tokens = {m.token for m in fcm.received}
        assert tokens == {made[z].push_token for z in got}, zone
        # TTL counts from the wave, not from the send: 30 s of it spent.
        assert 86360 <= ttl_of(fcm, made[zone]) <= 86370
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert body["status"] == "completed"
    assert body["counts"]["sent"] == 6


def test_new_york_is_not_sent_at_the_winter_offset(
    app: Flask, local_time_campaign: LocalTimeCampaign, fcm: FakeFcmServer, clock: Clock
) -> None:
    _, made = local_time_campaign()
    clock(at("2027-03-14T12:59"))  # 08:59 EDT
    run_passes(app)
    assert fcm.messages_for(made["America/New_York"].push_token) == []
    clock(at("2027-03-14T13:00:05"))
    run_passes(app)
    assert len(fcm.messages_for(made["America/New_York"].push_token)) == 1


def test_celery_finds_waves_through_the_sweep_not_hours_long_countdowns(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    local_time_campaign: LocalTimeCampaign,
    fcm: FakeFcmServer,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tasks in-process (eager); test_dispatch_celery runs real workers on Redis."""
    celery = app.extensions["celery"]
    celery.conf.task_always_eager = True
    app.config["CELERY_BROKER_URL"] = "memory://"
    countdowns: list[float] = []
    original = celery.Task.apply_async

    def spy(self: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        countdowns.append(float(options.get("countdown") or 0.0))
        return original(self, args, kwargs, **options)

    monkeypatch.setattr(celery.Task, "apply_async", spy)
    campaign_id, made = local_time_campaign()
    assert fcm.received == []  # enumerated by the tasks during send; nothing due
    with app.app_context():
        clock(at("2027-03-14T03:30:10"))
        tasks.sweep.apply()
        assert {m.token for m in fcm.received} == {
            made["Asia/Tokyo"].push_token,
            made["Asia/Kolkata"].push_token,
        }
        clock(at("2027-03-14T22:00:10"))
        tasks.sweep.apply()
    assert len(fcm.received) == 6
    assert max(countdowns) <= app.config["DISPATCH_COUNTDOWN_MAX_SECONDS"]
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert body["status"] == "completed"


def test_cancel_works_until_the_last_wave(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    local_time_campaign: LocalTimeCampaign,
    fcm: FakeFcmServer,
    clock: Clock,
) -> None:
    campaign_id, _ = local_time_campaign()
    clock(at("2027-03-14T09:00:10"))
    run_passes(app)
    assert len(fcm.received) == 3
    assert assert_counts_match_rows(app, campaign_id)["pending"] == 3  # the later waves
    cancelled = client.post(f"/v1/campaigns/{campaign_id}/cancel", headers=marketing).get_json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"]["suppressed"] == {"cancelled": 3}
    clock(at("2027-03-14T23:00"))
    run_passes(app)
    assert len(fcm.received) == 3
    assert_counts_match_rows(app, campaign_id)


@pytest.fixture
def quiet_app(dispatcher_app: Callable[..., Flask]) -> Flask:
    return dispatcher_app(QUIET_HOURS="21:00-08:00")


def test_quiet_hours_defer_then_consent_is_checked_again_at_the_hand_off(
    quiet_app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    fcm: FakeFcmServer,
    clock: Clock,
) -> None:
    clock(at("2027-01-10T21:30"))  # 22:30 in Berlin
    keeps = device(timezone="Europe/Berlin")
    withdraws = device(timezone="Europe/Berlin")
    own_hours = device(timezone="Europe/Berlin")
    client.put(
        "/v1/devices/me/preferences",
        json={"quiet_hours": {"start": "00:00", "end": "00:00"}},  # none for this user
        headers=bearer(own_hours.device_token),
    )
    campaign_id = create_campaign()
    short = create_campaign(ttl_seconds=3600)
    for cid in (campaign_id, short):
        client.post(f"/v1/campaigns/{cid}/send", headers=marketing)
    run_passes(quiet_app)
    assert {m.token for m in fcm.received} == {own_hours.push_token}
    rows = deliveries(quiet_app, campaign_id)
    assert rows[keeps.id] == ("pending", "quiet_hours")
    assert assert_counts_match_rows(quiet_app, campaign_id)["pending"] == 2  # deferred
    explained = client.get(
        f"/v1/campaigns/{campaign_id}/explain/{keeps.id}", headers=marketing
    ).get_json()
    assert explained["status"] == "pending"

    # Overnight, one user turns promotions off.
    client.put(
        "/v1/devices/me/preferences",
        json={"promotional_push": False},
        headers=bearer(withdraws.device_token),
    )
    clock(at("2027-01-11T07:00:20"))  # 08:00:20 in Berlin
    run_passes(quiet_app)
    assert fcm.messages_for(withdraws.push_token) == []
    assert len(fcm.messages_for(keeps.push_token)) == 1  # the long one; the short one expired
    # 9 h 30 min 20 s of its day were spent waiting (give or take the test's own seconds).
    assert abs(ttl_of(fcm, keeps) - (86400 - (9 * 3600 + 30 * 60 + 20))) <= 5
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert counts["sent"] == 2
    assert counts["suppressed"] == {"promotional_opt_out": 1}
    short_counts = client.get(f"/v1/campaigns/{short}", headers=marketing).get_json()["counts"]
    assert short_counts["suppressed"] == {"expired": 2}
    assert deliveries(quiet_app, short)[keeps.id] == ("suppressed", "expired")
    for cid in (campaign_id, short):
        assert_counts_match_rows(quiet_app, cid)


def test_without_quiet_hours_or_caps_sending_is_as_in_v1(
    app: Flask, sent_campaign: Send, device: Make, fcm: FakeFcmServer, clock: Clock
) -> None:
    clock(at("2027-01-10T23:30"))
    made = [device(timezone="Europe/Berlin") for _ in range(3)]
    for _ in range(4):
        sent_campaign()
    run_passes(app)
    assert collections.Counter(m.token for m in fcm.received) == {m.push_token: 4 for m in made}


@pytest.mark.parametrize("dispatchers", [2])
def test_caps_hold_with_two_dispatchers_racing(
    dispatcher_app: Callable[..., Flask],
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    sent_campaign: Send,
    device: Make,
    fcm: FakeFcmServer,
    dispatchers: int,
) -> None:
    made = [device() for _ in range(12)]
    ids = [sent_campaign(name=f"offer {i}").id for i in range(3)]
    settings = {
        "PROMO_FREQUENCY_CAP": "2/1d",
        "DISPATCH_CHUNK_SIZE": 2,
        "DISPATCH_ENUMERATE_BATCH": 5,
    }
    apps = [dispatcher_app(settings) for _ in range(dispatchers)]
    fcm.delay = 0.005
    race(*(functools.partial(drain, one) for one in apps))
    assert collections.Counter(m.token for m in fcm.received) == {m.push_token: 2 for m in made}
    capped = 0
    for cid in ids:
        counts = client.get(f"/v1/campaigns/{cid}", headers=marketing).get_json()["counts"]
        assert counts["targeted"] == counts["sent"] + sum(counts["suppressed"].values())
        capped += counts["suppressed"].get("frequency_capped", 0)
        assert_counts_match_rows(client.application, cid)
    assert capped == 12
    # Preview and explain name the cap as of now.
    fourth = create_campaign()
    capped_app = apps[0]
    with capped_app.test_client() as other:
        preview = other.post(f"/v1/campaigns/{fourth}/preview", headers=marketing).get_json()
        assert preview["eligible"] == 0
        assert preview["excluded"]["frequency_capped"] == 12
        explained = other.get(
            f"/v1/campaigns/{fourth}/explain/{made[0].id}", headers=marketing
        ).get_json()
        assert explained["exclusion_now"] == "frequency_capped"


def test_two_claims_at_the_same_moment_cannot_both_pass_a_cap(
    dispatcher_app: Callable[..., Flask], sent_campaign: Send, device: Make, fcm: FakeFcmServer
) -> None:
    """Two dispatchers claim two campaigns for the same devices at once: one wins each device."""
    made = [device() for _ in range(30)]
    ids = [sent_campaign(name=f"offer {i}").id for i in range(2)]
    apps = [dispatcher_app(PROMO_FREQUENCY_CAP="1/1d", DISPATCH_CHUNK_SIZE=30) for _ in ids]
    for one, cid in zip(apps, ids, strict=True):
        with one.app_context():
            dispatch.enumerate_batch(db.session, cid, dispatch.Settings.from_config(one.config))
            db.session.remove()
    barrier = threading.Barrier(len(apps))

    def claim(one: Flask, cid: str) -> None:
        with one.app_context():
            settings = dispatch.Settings.from_config(one.config)
            push = dispatch.transport(one)
            barrier.wait()
            dispatch.process_chunk(db.session, push, cid, settings)
            db.session.remove()

    race(*(functools.partial(claim, one, cid) for one, cid in zip(apps, ids, strict=True)))
    assert collections.Counter(m.token for m in fcm.received) == {m.push_token: 1 for m in made}


def test_a_new_schedule_replans_the_waiting_deliveries(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    fcm: FakeFcmServer,
    clock: Clock,
) -> None:
    clock(at("2027-03-13T20:00"))
    tokyo = device(timezone="Asia/Tokyo")
    london = device(timezone="Europe/London")
    campaign_id = create_campaign(send_at="2027-03-20T00:00:00Z")
    client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing)
    run_passes(app)
    # Moved to 10:00 local from the 14th: Tokyo at 01:00 UTC, London at 10:00 UTC.
    patched = client.patch(
        f"/v1/campaigns/{campaign_id}",
        json={"send_at": "2027-03-14T00:00:00Z", "local_time": "10:00"},
        headers=marketing,
    )
    assert patched.status_code == 200, patched.get_json()
    clock(at("2027-03-14T01:00:10"))
    run_passes(app)
    assert {m.token for m in fcm.received} == {tokyo.push_token}
    clock(at("2027-03-14T10:00:10"))
    run_passes(app)
    assert {m.token for m in fcm.received} == {tokyo.push_token, london.push_token}
    assert (
        client.patch(
            f"/v1/campaigns/{campaign_id}", json={"title": "late"}, headers=marketing
        ).status_code
        == 409
    )


@pytest.fixture
def send_at_nine_and_retry_at_two_past(
    dispatcher_app: Callable[..., Flask], sent_campaign: Send, clock: Clock
) -> Callable[[int], str]:
    """Send a campaign with this TTL at 09:00, then run the dispatcher again at 09:02,
    when a delivery FCM refused as retryable is due again (back-off: 60 s)."""

    def send(ttl_seconds: int) -> str:
        sender = dispatcher_app(
            PUSH_RETRY_BASE_SECONDS=60.0,
            PUSH_RETRY_MAX_SECONDS=60.0,
            PUSH_RETRY_WINDOW_SECONDS=86400.0,
        )
        clock(at("2027-01-11T09:00"))
        campaign_id = sent_campaign(ttl_seconds=ttl_seconds).id
        run_passes(sender)
        clock(at("2027-01-11T09:02"))
        run_passes(sender)
        assert_counts_match_rows(sender, campaign_id)
        return campaign_id

    return send


def test_a_retried_campaign_message_carries_what_is_left_of_its_ttl(
    send_at_nine_and_retry_at_two_past: Callable[[int], str], device: Make, fcm: FakeFcmServer
) -> None:
    """Refused as retryable, sent 2 minutes later: 2 minutes less TTL on the wire."""
    made = device()
    fcm.fail_times(str(made.push_token), 1, "unavailable")
    send_at_nine_and_retry_at_two_past(600)
    first, retried = fcm.messages_for(str(made.push_token))
    assert first.body["message"]["android"]["ttl"] == "600s"
    assert retried.answer == "ok"
    # Accepted a moment after 09:00 (the test clock moves on with real time, which a
    # loaded machine stretches): a little over 120 s of its TTL spent by 09:02.
    assert 460 <= int(retried.body["message"]["android"]["ttl"].rstrip("s")) <= 481


def test_a_campaign_with_no_ttl_goes_once_now_or_never(
    send_at_nine_and_retry_at_two_past: Callable[[int], str],
    client: FlaskClient,
    marketing: Headers,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    """ttl_seconds 0: handed over at once with TTL 0; refused as retryable, it fails, no retry."""
    online, flaky = device(), device()
    fcm.fail_times(str(flaky.push_token), 1, "unavailable")
    campaign_id = send_at_nine_and_retry_at_two_past(0)
    (sent,) = fcm.messages_for(str(online.push_token))
    assert sent.body["message"]["android"]["ttl"] == "0s"
    assert len(fcm.messages_for(str(flaky.push_token))) == 1  # the refused try, no retry
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert (counts["sent"], counts["failed"], counts["pending"]) == (1, 1, 0)
