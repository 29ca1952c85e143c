"""Celery mode, real processes: scheduled and local-time waves fired by beat's sweep.

A worker and a beat process on PostgreSQL and Redis follow the test's clock
(tests/clocked_celery.py): the test moves it to just before each wave, lets the
sweep run and sees nothing sent, then just past the wave and sees its devices
reached, each once, never before its instant. Beat sweeps every half second here
(30 s in production); the clock jumps hours, so no countdown is longer than a
sweep, as under acks_late it must not be.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from models import utcnow
from models.base import follow_clock, share_clock, travel_to
from tests.campaign_fixtures import (
    Made,
    create_campaign,
    device,
    fcm,
    fcm_settings,
    kill_hard,
    marketing,
    stop,
    wait_for,
)
from tests.celery_fixtures import ROOT, WorkerEnv, app, queue, start_worker, worker_env
from tests.conftest import bearer
from tests.fakes.fcm_server import FakeFcmServer
from tests.messaging_fixtures import SharedClock, shared_clock
from tests.test_scheduling import ZONES, at

__all__ = ["app", "create_campaign", "device", "fcm", "fcm_settings", "marketing", "queue"]
__all__ += ["shared_clock", "worker_env"]

Headers = dict[str, str]
SWEEP_SECONDS = "0.5"  # beat's sweep; 30 s in production


def _start_beat(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[Any]:
    """Celery beat of the clocked app, its schedule file in `tmp_path`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "tests.clocked_celery:celery",
            "beat",
            "-s",
            str(tmp_path / "beat-schedule"),
            "-l",
            "info",
        ],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "beat.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def clocked_celery(
    app: Flask,
    worker_env: WorkerEnv,
    shared_clock: SharedClock,
    tmp_path: Path,
) -> Iterator[Callable[[int], None]]:
    """A worker and beat on the test's clock; yields `sweeps(n)`: wait for n more sweeps."""
    env = worker_env(
        DISPATCH_CHUNK_SIZE="5",
        TEST_CLOCK_FILE=str(shared_clock.path),
        TEST_SWEEP_SECONDS=SWEEP_SECONDS,
    )
    log = tmp_path / "worker.log"
    worker = start_worker("clocked", env, None, log, celery_app="tests.clocked_celery:celery")
    beat = _start_beat(env, tmp_path)

    def done() -> int:
        return sum(
            "mobile_api.dispatch.sweep[" in line and "succeeded" in line
            for line in log.read_text().splitlines()
        )

    def sweeps(more: int) -> None:
        target = done() + more
        ended = lambda: worker.poll() is not None or beat.poll() is not None  # noqa: E731
        assert wait_for(lambda: done() >= target or ended(), 60, 0.05), log.read_text()
        assert not ended(), log.read_text() + (tmp_path / "beat.log").read_text()

    try:
        sweeps(1)  # both running: the worker takes beat's sweeps
        yield sweeps
    finally:
        kill_hard(beat)  # it holds nothing a test could lose
        stop(worker)


def _arrivals(fcm: FakeFcmServer, title: str) -> dict[str, list[datetime]]:
    """token → when (on the service's clock) each message titled `title` arrived."""
    got: dict[str, list[datetime]] = collections.defaultdict(list)
    for message in fcm.received:
        if message.body["message"]["notification"]["title"] == title:
            got[message.token].append(datetime.fromtimestamp(message.at, utcnow().tzinfo))
    return got


def test_scheduled_and_local_time_waves_are_sent_by_celery_at_their_instants(
    app: Flask,
    client: FlaskClient,
    marketing: Headers,
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
    fcm: FakeFcmServer,
    shared_clock: SharedClock,
    clocked_celery: Callable[[int], None],
) -> None:
    """09:00 local in six zones on the day the US springs forward, and one send_at."""
    sweeps = clocked_celery
    fcm.clock = lambda: utcnow().timestamp()  # arrivals on the service's clock
    shared_clock(at("2027-03-13T20:00"))
    made = {zone: device(timezone=zone) for zone in ZONES}
    withdraws = device(timezone="Europe/London")  # opts out at 08:00 London
    local = create_campaign(
        title="good morning",
        local_time="09:00",
        send_at="2027-03-14T00:00:00Z",
        fallback_timezone="Australia/Sydney",
    )
    scheduled = create_campaign(title="at six", send_at="2027-03-14T06:00:00Z")
    for campaign_id in (local, scheduled):
        sent = client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing)
        assert sent.status_code == 202
        assert sent.get_json()["status"] == "scheduled"

    everyone = {m.push_token for m in made.values()} | {withdraws.push_token}
    waves: list[tuple[datetime, str, set[str | None]]] = [
        (due, "good morning", {made[zone].push_token}) for zone, due in ZONES.items()
    ]
    waves.append((at("2027-03-14T06:00"), "at six", everyone))
    waves.sort(key=lambda wave: wave[0])
    cancel_before = ZONES[None]  # the last wave: Sydney's morning
    expected: dict[str, set[str | None]] = {"good morning": set(), "at six": set()}
    for instant, title, tokens in waves:
        if instant == at("2027-03-14T09:00"):
            shared_clock(at("2027-03-14T08:00"))
            response = client.put(
                "/v1/devices/me/preferences",
                json={"promotional_push": False},
                headers=bearer(withdraws.device_token),
            )
            assert response.status_code == 200
        if instant == cancel_before:
            shared_clock(instant - timedelta(minutes=5))
            cancelled = client.post(f"/v1/campaigns/{local}/cancel", headers=marketing)
            assert cancelled.get_json()["status"] == "cancelled"
        # A minute before the wave: sweeps run, nothing more is sent.
        before = len(fcm.received)
        shared_clock(instant - timedelta(minutes=1))
        sweeps(2)
        assert len(fcm.received) == before, (instant, fcm.received[before:])
        shared_clock(instant + timedelta(seconds=5))
        if instant == cancel_before:
            sweeps(3)
            break
        expected[title] |= tokens
        assert wait_for(lambda t=title: set(_arrivals(fcm, t)) == expected[t], 60, 0.05), (
            instant,
            title,
        )

    good_morning = _arrivals(fcm, "good morning")
    assert set(good_morning) == {made[zone].push_token for zone in ZONES if zone is not None}
    for zone, due in ZONES.items():
        if zone is not None:
            (arrived,) = good_morning[str(made[zone].push_token)]  # exactly once
            assert arrived >= due, zone
    at_six = _arrivals(fcm, "at six")
    assert collections.Counter({token: len(times) for token, times in at_six.items()}) == (
        collections.Counter(dict.fromkeys(everyone, 1))
    )
    assert min(min(times) for times in at_six.values()) >= at("2027-03-14T06:00")

    body = client.get(f"/v1/campaigns/{local}", headers=marketing).get_json()
    assert body["status"] == "cancelled"
    assert body["counts"]["sent"] == 5
    assert body["counts"]["suppressed"] == {"promotional_opt_out": 1, "cancelled": 1}
    body = client.get(f"/v1/campaigns/{scheduled}", headers=marketing).get_json()
    assert (body["status"], body["counts"]["sent"]) == ("completed", 7)


def test_a_process_following_the_clock_file_reads_the_time_the_test_set(tmp_path: Path) -> None:
    """What tests/clocked_celery.py does in the worker and beat processes."""
    path = tmp_path / "clock"
    follow_clock(path)
    try:
        assert abs(utcnow() - datetime.now(UTC)) < timedelta(seconds=5)  # no file: real time
        travel_to(at("2027-03-14T13:00"))
        share_clock(path)
        travel_to(None)  # this process's own offset no longer counts: the file's does
        assert timedelta(0) <= utcnow() - at("2027-03-14T13:00") < timedelta(seconds=5)
    finally:
        follow_clock(None)
    assert abs(utcnow() - datetime.now(UTC)) < timedelta(seconds=5)
