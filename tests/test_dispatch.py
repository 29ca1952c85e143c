"""Dispatch via firebase-admin to a loopback FCM server: consent at hand-off, retries, crashes."""

from __future__ import annotations

import collections
import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from mobile_api import periodic, tasks
from mobile_api.extensions import db
from mobile_api.push import LogTransport, Outcome, Router, SendResult
from mobile_api.services import dispatch
from mobile_api.worker import Worker
from models import Campaign, Delivery, utcnow
from tests.campaign_fixtures import (
    Made,
    Sent,
    admin,
    app,
    assert_balanced,
    assert_counts_match_rows,
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
    terminate_account,
    update_device,
)
from tests.conftest import bearer
from tests.fakes.fcm_server import FakeFcmServer

__all__ = [
    "admin",
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
ROOT = Path(__file__).resolve().parent.parent


def _tokens(fcm: FakeFcmServer) -> collections.Counter[str]:
    return collections.Counter(m.token for m in fcm.received)


def test_only_deliverable_devices_reach_fcm(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    ok, _, ok_token = device()
    out = device(promotional=False).id
    denied = device(push_permission="denied").id
    disabled = device().id
    update_device(app, disabled, disabled_at=utcnow())
    tokenless = device(push_token=None).id
    invalid = device().id
    update_device(app, invalid, push_token_invalid_at=utcnow())
    gone = device(account_id="acct-gone").id
    terminate_account(app, "acct-gone")
    unreg, unreg_device_token, _ = device(prefix="unreg-")
    refused = device(prefix="invalid-").id

    campaign_id = create_campaign(ttl_seconds=600, collapse_key="sale", priority="high")
    body = send_and_drain(client, app, marketing, campaign_id)

    reached = {m.token for m in fcm.received}
    assert len(reached) == 3
    assert all(t == ok_token or t.startswith(("unreg-", "invalid-")) for t in reached)
    assert ok_token is not None
    message = fcm.messages_for(ok_token)[0].body["message"]
    assert message["notification"] == {"title": "20% off", "body": "Only this week."}
    assert message["data"] == {"screen": "offers"}
    assert message["android"]["priority"] == "high"
    assert message["android"]["collapse_key"] == "sale"
    # One identity on both platforms, the same at every hand-off (API.md v1.1).
    assert message["android"]["notification"]["tag"] == "sale"
    assert message["apns"]["headers"]["apns-collapse-id"] == "sale"
    # The TTL counts from the send: what is left at the hand-off, a second or two less
    # on a loaded machine.
    assert 590 <= int(message["android"]["ttl"].removesuffix("s")) <= 600

    assert body["status"] == "completed"
    counts = body["counts"]
    assert counts["targeted"] == 9
    assert (counts["sent"], counts["failed"], counts["invalid_tokens_pruned"]) == (1, 2, 1)
    assert counts["suppressed"] == {
        "promotional_opt_out": 1,
        "push_permission_denied": 1,
        "disabled": 1,
        "no_push_token": 1,
        "invalid_push_token": 1,
        "account_terminated": 1,
    }
    assert_balanced(counts)
    rows = deliveries(app, campaign_id)
    assert rows[ok] == ("sent", None)
    assert rows[unreg] == ("failed", "unregistered")
    assert rows[refused] == ("failed", "invalid_argument")
    failed = client.get(
        f"/v1/campaigns/{campaign_id}/deliveries?status=failed", headers=marketing
    ).get_json()["items"]
    assert sorted((i["device_id"], i["status"], i["reason"]) for i in failed) == sorted(
        [(unreg, "failed", "unregistered"), (refused, "failed", "invalid_argument")]
    )
    assert rows[out] == ("suppressed", "promotional_opt_out")
    assert rows[denied] == ("suppressed", "push_permission_denied")
    assert rows[tokenless] == ("suppressed", "no_push_token")
    assert rows[gone] == ("suppressed", "account_terminated")
    assert fcm.attempts[next(t for t in reached if t.startswith("invalid-"))] == 1  # not retried

    # The unregistered token is pruned at once: the app sees it, the next campaign skips it.
    me = client.get("/v1/devices/me", headers=bearer(unreg_device_token)).get_json()
    assert me["push_token_valid"] is False
    fcm.reset()
    second = send_and_drain(client, app, marketing, create_campaign())
    assert second["counts"]["suppressed"]["invalid_push_token"] == 2
    assert not any(t.startswith("unreg-") for t in _tokens(fcm))
    # A check-in with a new token makes the device reachable again.
    client.patch(
        "/v1/devices/me", json={"push_token": "fresh-token-1"}, headers=bearer(unreg_device_token)
    )
    third = send_and_drain(client, app, marketing, create_campaign())
    assert "fresh-token-1" in _tokens(fcm)
    assert third["counts"]["sent"] == 2  # and the invalid- token is refused again


def test_a_campaign_that_fcm_refused_entirely_ends_failed(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    # As when the project's credentials lack the FCM permission: every message refused.
    device(prefix="thirdparty-")
    device(prefix="thirdparty-")
    device(promotional=False)

    body = send_and_drain(client, app, marketing, create_campaign())

    assert body["status"] == "failed"
    counts = body["counts"]
    assert (counts["sent"], counts["failed"]) == (0, 2)
    assert counts["suppressed"] == {"promotional_opt_out": 1}
    assert_balanced(counts)
    # One message getting through is a completed campaign, whatever else failed.
    device()
    assert send_and_drain(client, app, marketing, create_campaign())["status"] == "completed"
    # As is a campaign with nobody left to send to: nothing failed.
    only_opted_out = create_campaign(audience={"platforms": ["ios"]})
    assert send_and_drain(client, app, marketing, only_opted_out)["status"] == "completed"


def test_service_campaign_ignores_promotional_opt_out(
    app: Flask,
    client: FlaskClient,
    admin: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    token = device(promotional=False).push_token
    denied_token = device(promotional=False, push_permission="denied").push_token
    body = send_and_drain(client, app, admin, create_campaign(headers=admin, category="service"))
    assert set(_tokens(fcm)) == {token}
    assert denied_token not in _tokens(fcm)
    assert body["counts"]["suppressed"] == {"push_permission_denied": 1}


def test_retryable_errors_back_off_until_the_retry_window_ends(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    flaky, _, flaky_token = device()
    fcm.fail_times(str(flaky_token), 2, "unavailable")
    quota = device(prefix="quota-").id
    internal = device(prefix="internal-").id
    for _ in range(3):
        device()  # FCM answers most of each chunk: its breaker stays closed
    # Wide enough for several tries even on a loaded machine, where one try can take 0.3 s.
    window = 2.0
    app.config["PUSH_RETRY_WINDOW_SECONDS"] = window
    campaign_id = create_campaign()
    started = time.monotonic()
    body = send_and_drain(client, app, marketing, campaign_id)

    assert flaky_token is not None
    assert fcm.attempts[flaky_token] == 3
    rows = deliveries(app, campaign_id)
    assert rows[flaky] == ("sent", None)
    # Retried for as long as the window lasts, not for a number of attempts.
    assert rows[quota] == ("failed", "quota_exceeded")
    assert rows[internal] == ("failed", "internal")
    assert time.monotonic() - started >= window
    quota_token = next(t for t in fcm.attempts if t.startswith("quota-"))
    tries = fcm.messages_for(quota_token)
    assert len(tries) >= 3
    assert tries[-1].at - tries[0].at >= window / 2  # kept trying through the window
    assert body["counts"]["sent"] == 4
    assert body["counts"]["failed"] == 2
    assert_balanced(body["counts"])


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    settings = dispatch.Settings(retry_base_seconds=2.0, retry_max_seconds=60.0)
    rng = random.Random(7)
    delays = [dispatch.backoff_seconds(n, None, settings, rng) for n in range(1, 8)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered
    assert dispatch.backoff_seconds(1, 30.0, settings, rng) == 30.0
    assert dispatch.backoff_seconds(1, 600.0, settings, rng) == 600.0  # even above the cap


def _step(app: Flask, campaign_id: str, chunks: int) -> None:
    """Enumerate and hand over `chunks` chunks, as a dispatcher would before dying."""
    settings = dispatch.Settings.from_config(app.config)
    with app.app_context():
        push = dispatch.transport(app)
        batch = dispatch.enumerate_batch(db.session, campaign_id, settings)
        assert batch is not None
        after = 0
        for _ in range(chunks):
            result = dispatch.process_chunk(db.session, push, campaign_id, settings, after_id=after)
            assert result.claimed
            after = result.last_id or after
            assert_counts_match_rows(app, campaign_id)  # as counted while it sends
        db.session.remove()


def test_a_chunk_whose_lease_lapsed_mid_hand_off_is_counted_by_its_last_hand_off(
    client: FlaskClient, marketing: Headers, sent_campaign: Send, fcm: FakeFcmServer
) -> None:
    """Taken over while in flight: handed over once more, same identity; late answers ignored."""
    app = client.application
    campaign_id, made = sent_campaign(devices=4, collapse_key="spring")
    *delivered, opted_out = made  # the last withdraws consent while the first is in flight
    settings = dispatch.Settings.from_config(app.config)
    with app.app_context():
        push = dispatch.transport(app)

        class LeaseLapses:
            name = "lapsing"
            max_batch = push.max_batch

            def send(self, messages: list[Any]) -> list[Any]:
                results = push.send(messages)
                # Meanwhile the claim's lease lapsed and another dispatcher took the
                # chunk over, reading consent again at its own hand-off.
                client.put(
                    "/v1/devices/me/preferences",
                    json={"promotional_push": False},
                    headers=bearer(opted_out.device_token),
                )
                lapsed = dispatch.Settings(claim_lease_seconds=0.0)
                assert dispatch.release_lapsed_claims(db.session, lapsed) == 4
                taken = dispatch.process_chunk(db.session, push, campaign_id, settings)
                assert taken.claimed == 4
                return [SendResult(Outcome.RETRY, "unavailable")] * len(results)

            def close(self) -> None:
                push.close()

        dispatch.enumerate_batch(db.session, campaign_id, settings)
        result = dispatch.process_chunk(db.session, LeaseLapses(), campaign_id, settings)
        db.session.remove()
    assert_counts_match_rows(app, campaign_id)

    assert result.claimed == 4
    rows = deliveries(app, campaign_id)
    assert {rows[d.id] for d in delivered} == {("sent", None)}  # not the late "unavailable"
    assert rows[opted_out.id] == ("suppressed", "promotional_opt_out")
    for one in delivered:
        copies = fcm.messages_for(str(one.push_token))
        assert len(copies) == 2
        assert {m.identity for m in copies} == {("spring", "spring", "spring")}
    assert len(fcm.messages_for(str(opted_out.push_token))) == 1  # not handed over again
    drain(app)
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert (counts["sent"], counts["failed"]) == (3, 0)
    assert counts["suppressed"] == {"promotional_opt_out": 1}
    assert_balanced(counts)
    assert_counts_match_rows(app, campaign_id)


def test_state_changes_mid_campaign_suppress_the_rest(
    client: FlaskClient, marketing: Headers, sent_campaign: Send, device: Make, fcm: FakeFcmServer
) -> None:
    app = client.application
    made = [device(account_id=f"acct-{i}") for i in range(10)]
    campaign_id = sent_campaign(chunk_size=2).id
    _step(app, campaign_id, chunks=1)
    assert len(fcm.received) == 2

    # Committed while the campaign is mid-send:
    opted_out, opted_out_token, _ = made[3]
    client.put(
        "/v1/devices/me/preferences",
        json={"promotional_push": False},
        headers=bearer(opted_out_token),
    )
    permission_off = made[4]
    client.patch(
        "/v1/devices/me", json={"push_permission": "denied"}, headers=bearer(permission_off[1])
    )
    update_device(app, made[5][0], disabled_at=utcnow())
    client.delete("/v1/devices/me", headers=bearer(made[6][1]))  # erased
    terminate_account(app, "acct-7")

    drain(app)
    rows = deliveries(app, campaign_id)
    assert rows[opted_out] == ("suppressed", "promotional_opt_out")
    assert rows[permission_off[0]] == ("suppressed", "push_permission_denied")
    assert rows[made[5][0]] == ("suppressed", "disabled")
    assert rows[None] == ("suppressed", "erased")  # the erased device's row names no one
    assert rows[made[7][0]] == ("suppressed", "account_terminated")
    assert len(fcm.received) == 5  # 2 before, then devices 2, 8 and 9
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert body["counts"]["targeted"] == 10
    assert_balanced(body["counts"])
    assert_counts_match_rows(app, campaign_id)


def test_cancel_stops_every_chunk_not_yet_handed_over(
    client: FlaskClient, marketing: Headers, sent_campaign: Send, fcm: FakeFcmServer
) -> None:
    app = client.application
    campaign_id = sent_campaign(devices=10, chunk_size=3).id
    _step(app, campaign_id, chunks=1)
    response = client.post(f"/v1/campaigns/{campaign_id}/cancel", headers=marketing)
    assert response.get_json()["status"] == "cancelled"
    drain(app)
    assert len(fcm.received) == 3
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert counts["sent"] == 3
    assert counts["suppressed"] == {"cancelled": 7}
    assert_balanced(counts)
    assert_counts_match_rows(app, campaign_id)


def test_crash_between_chunks_resumes_exactly_once(
    dispatcher_app: Callable[..., Flask],
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    fcm: FakeFcmServer,
) -> None:
    app = client.application
    batches = {"DISPATCH_CHUNK_SIZE": 4, "DISPATCH_ENUMERATE_BATCH": 6}
    app.config.update(batches)
    campaign_id, made = sent_campaign(devices=15)
    _step(app, campaign_id, chunks=1)  # then the process "dies": nothing else survives
    close_transport(app)

    drain(dispatcher_app(batches))  # restarted
    assert _tokens(fcm) == collections.Counter(d.push_token for d in made)
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert (counts["targeted"], counts["sent"]) == (15, 15)
    assert_counts_match_rows(app, campaign_id)


def test_two_dispatchers_at_once_never_double_send(
    dispatcher_app: Callable[..., Flask],
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    fcm: FakeFcmServer,
) -> None:
    campaign_id, made = sent_campaign(devices=40)
    apps = [dispatcher_app(DISPATCH_CHUNK_SIZE=3, DISPATCH_ENUMERATE_BATCH=7) for _ in range(2)]
    fcm.delay = 0.005
    errors: list[BaseException] = []

    def run(one: Flask) -> None:
        try:
            drain(one)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(one,)) for one in apps]
    for thread in threads:
        thread.start()
    seen = []  # the counts as reported while both dispatchers work, each true of the rows
    while any(thread.is_alive() for thread in threads):
        seen.append(assert_counts_match_rows(client.application, campaign_id))
    for thread in threads:
        thread.join()
    assert not errors
    assert _tokens(fcm) == collections.Counter(d.push_token for d in made)
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert body["status"] == "completed"
    assert body["counts"]["sent"] == 40
    assert_counts_match_rows(client.application, campaign_id)
    assert any(0 < counts["sent"] < 40 for counts in seen), "never seen mid-way"


def test_without_credentials_the_log_transport_says_so(
    app_factory: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    plain = app_factory()
    with caplog.at_level("WARNING"):
        push = dispatch.transport(plain)
    assert isinstance(push, Router)
    assert isinstance(push.transports["fcm"], LogTransport)
    assert set(push.transports) == {"fcm"}  # APNs unset: no transport for its devices
    assert dispatch.transport(plain) is push
    assert "FCM is not configured" in caplog.text


def test_periodic_jobs_run_in_the_worker_and_in_beat(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        periodic, "JOBS", [periodic.PeriodicJob("probe", 3600, "tests.test_dispatch:_probe")]
    )
    monkeypatch.setattr(sys.modules[__name__], "_CALLS", calls)
    worker = Worker(app)
    worker.run_pass()
    worker.run_pass()  # not due again within the hour
    assert calls == ["ran"]
    celery = tasks.make_celery(app)
    assert celery.conf.beat_schedule["probe"]["args"] == ("probe",)
    assert "dispatch-sweep" in celery.conf.beat_schedule

    monkeypatch.setattr(
        periodic, "JOBS", [periodic.PeriodicJob("broken", 1, "tests.test_dispatch:_broken")]
    )
    assert periodic.Schedule().run_due() == ["broken"]  # logged, not raised
    with pytest.raises(KeyError):
        periodic.find("missing")


_CALLS: list[str] = []


def _probe() -> None:
    _CALLS.append("ran")


def _broken() -> None:
    raise RuntimeError("boom")


def test_celery_tasks_run_the_same_units(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    """The chunk tasks in-process (eager); two workers on Redis: test_dispatch_celery."""
    app.config.update(DISPATCH_CHUNK_SIZE=2, DISPATCH_ENUMERATE_BATCH=3)
    celery = app.extensions["celery"]
    celery.conf.task_always_eager = True
    tokens = {device().push_token for _ in range(7)}
    app.config["CELERY_BROKER_URL"] = "memory://"
    queued = create_campaign()
    body = send_and_drain(client, app, marketing, queued)  # the tasks ran during send
    assert body["status"] == "completed"
    assert _tokens(fcm) == collections.Counter(dict.fromkeys(tokens, 1))

    # A campaign whose task was lost (queued without a broker): the sweep recovers it.
    app.config["CELERY_BROKER_URL"] = None
    lost = create_campaign()
    client.post(f"/v1/campaigns/{lost}/send", headers=marketing)
    with app.app_context():
        db.session.execute(
            sa.update(Campaign)
            .where(Campaign.id == lost)
            .values(queued_at=utcnow() - timedelta(minutes=10))
        )
        db.session.commit()
    tasks.sweep.apply()
    status = client.get(f"/v1/campaigns/{lost}", headers=marketing).get_json()["status"]
    assert status == "completed"
    assert _tokens(fcm) == collections.Counter(dict.fromkeys(tokens, 2))


def test_drain_command_sends_queued_campaigns(
    app: Flask, sent_campaign: Send, fcm: FakeFcmServer
) -> None:
    sent = sent_campaign(devices=1)
    result = app.test_cli_runner().invoke(args=["dispatch", "drain", "--timeout", "20"])
    assert result.exit_code == 0, result.output
    assert "drained in" in result.output
    assert set(_tokens(fcm)) == sent.tokens


def test_the_privacy_purge_is_a_registered_periodic_job(app, register) -> None:
    from datetime import timedelta

    from mobile_api.extensions import db
    from models import AccountTermination, Device, utcnow

    job = periodic.find("privacy-purge")
    assert job.every_seconds <= 24 * 3600
    device, _ = register(account_id="acct-due")
    with app.app_context():
        db.session.add(
            AccountTermination(account_id="acct-due", terminated_at=utcnow() - timedelta(days=15))
        )
        db.session.commit()
        periodic.run("privacy-purge")
        assert db.session.get(Device, device["id"]) is None


def test_an_unreachable_broker_does_not_turn_a_send_into_an_error(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kombu.exceptions import OperationalError

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("connection refused")

    app.config["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"
    monkeypatch.setattr(tasks.dispatch_campaign, "delay", broker_down)
    campaign_id = create_campaign()
    response = client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing)
    # Committed as queued: the beat sweep enqueues it once the broker is back.
    assert response.status_code == 202
    assert response.get_json()["status"] == "queued"
    again = client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing)
    assert again.get_json()["error"] == "campaign_already_sent"


def test_idle_polls_of_the_embedded_worker_write_nothing(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    fcm: FakeFcmServer,
) -> None:
    """SQLite has one writer: a worker waiting for a retry must leave it to the web workers."""
    app.config.update(PUSH_RETRY_BASE_SECONDS=3600.0, PUSH_RETRY_MAX_SECONDS=3600.0)
    campaign_id, (waiting, _) = sent_campaign(devices=2)
    fcm.fail_times(str(waiting.push_token), 1, "unavailable")  # retried in about an hour
    worker = Worker(app)
    assert worker.run_pass() == (1, 1)  # sent one, the other waits for its retry
    writes: list[str] = []

    def count_writes(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            writes.append(statement)

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", count_writes)
    try:
        for _ in range(5):
            assert worker.run_pass() == (0, 1)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count_writes)
    assert writes == []
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert (body["status"], body["counts"]["sent"], body["counts"]["pending"]) == ("sending", 1, 1)


_MIN = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("progress_ago", "enumerated", "due_ago", "expected"),
    [
        # Chunks of this campaign were claimed a minute ago: its tasks are alive,
        # however overdue the rest is (a long queue).
        (1, False, None, False),
        (1, True, 30, False),
        # Nothing claimed or recorded for ten minutes, and work left: lost.
        (10, False, None, True),
        (10, True, 6, True),
        (None, False, None, True),  # queued ten minutes ago, never started
        # Quiet, but only waiting: for retries, or for nothing at all.
        (10, True, None, False),
        (10, True, 1, False),
        (10, True, -5, False),
    ],
)
def test_a_campaign_is_stalled_only_without_progress_and_with_work_overdue(
    progress_ago: int | None, enumerated: bool, due_ago: int | None, expected: bool
) -> None:
    now = utcnow()
    campaign = Campaign(
        queued_at=now - 10 * _MIN,
        progress_at=None if progress_ago is None else now - progress_ago * _MIN,
        enumeration_done=enumerated,
    )
    due = None if due_ago is None else now - due_ago * _MIN
    assert dispatch.stalled(campaign, due, now, stall=5 * _MIN) is expected


def test_the_sweep_recovers_lost_chunks_once(
    app: Flask, sent_campaign: Send, fcm: FakeFcmServer
) -> None:
    app.extensions["celery"].conf.task_always_eager = True  # the sweep's tasks run in-process
    campaign_id, made = sent_campaign(devices=5, chunk_size=2)
    long_ago = utcnow() - timedelta(hours=1)
    with app.app_context():
        # Enumerated, then its chunk tasks were lost with the broker.
        dispatch.enumerate_batch(db.session, campaign_id, dispatch.Settings.from_config(app.config))
        db.session.execute(
            sa.update(Campaign).where(Campaign.id == campaign_id).values(progress_at=long_ago)
        )
        db.session.execute(
            sa.update(Delivery)
            .where(Delivery.campaign_id == campaign_id)
            .values(next_attempt_at=long_ago)
        )
        db.session.commit()
        tasks.sweep.apply()
        tasks.sweep.apply()
        campaign = db.session.get(Campaign, campaign_id)
        assert campaign is not None
        assert (campaign.status, campaign.recovery_queued_at) == ("completed", None)
        assert campaign.progress_at is not None and campaign.progress_at > long_ago
        db.session.remove()
    assert _tokens(fcm) == collections.Counter(d.push_token for d in made)


def test_devices_registered_after_sending_started_are_not_targeted(
    client: FlaskClient,
    marketing: Headers,
    sent_campaign: Send,
    device: Make,
    fcm: FakeFcmServer,
) -> None:
    """API.md: `targeted` counts the devices matching the audience when sending started."""
    app = client.application
    app.config["DISPATCH_ENUMERATE_BATCH"] = 1  # enumeration is still under way below
    campaign_id, early = sent_campaign(devices=3)
    _step(app, campaign_id, chunks=1)
    late = device()  # matches the audience, but only after sending started

    drain(app)

    body = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()
    assert body["status"] == "completed"
    assert body["counts"]["targeted"] == 3
    assert body["counts"]["sent"] == 3
    assert late.id not in deliveries(app, campaign_id)
    assert _tokens(fcm) == collections.Counter(d.push_token for d in early)
    explained = client.get(f"/v1/campaigns/{campaign_id}/explain/{late.id}", headers=marketing)
    assert explained.get_json()["targeted"] is False
