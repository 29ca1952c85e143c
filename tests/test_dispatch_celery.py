"""Celery mode: two workers on the real Redis split one campaign with no duplicate pushes."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import kombu
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from mobile_api import tasks
from mobile_api.extensions import db
from models import Campaign
from tests.campaign_fixtures import (
    PROJECT,
    Made,
    assert_handed_over,
    campaign_status,
    close_transport,
    create_campaign,
    device,
    fcm,
    fcm_settings,
    kill_hard,
    marketing,
    stop,
    wait_for,
)
from tests.celery_fixtures import (
    REDIS_URL,
    WorkerEnv,
    app,
    queue,
    ready,
    running_worker,
    start_worker,
    waiting_messages,
    worker_env,
)
from tests.conftest import make_app
from tests.fakes.fcm_server import FakeFcmServer

__all__ = ["app", "create_campaign", "device", "fcm", "fcm_settings", "marketing", "queue"]
__all__ += ["worker_env"]


AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(params=["redis", "amqp"])
def broker(
    request: pytest.FixtureRequest,
    app: Flask,
    postgres_url: str,
    fcm_settings: dict[str, Any],
    queue: str,
) -> Iterator[tuple[str, Flask]]:
    """The broker's URL and a web app sending through it: Redis, or RabbitMQ."""
    if request.param == "redis":
        yield REDIS_URL, app
        return
    with kombu.Connection(AMQP_URL, connect_timeout=3) as connection:
        try:
            connection.ensure_connection(max_retries=1)
        except Exception as exc:
            pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}: {exc}")
    rabbit = make_app(postgres_url, **fcm_settings, CELERY_BROKER_URL=AMQP_URL, CELERY_QUEUE=queue)
    yield AMQP_URL, rabbit
    with kombu.Connection(AMQP_URL) as connection:
        for name in (queue, tasks.notification_queue(rabbit)):
            connection.default_channel.queue_delete(name)
    close_transport(rabbit)


def test_two_celery_workers_process_one_campaign_without_duplicates(
    app: Flask,
    broker: tuple[str, Flask],
    client: FlaskClient,
    worker_env: WorkerEnv,
    queue: str,
    marketing: dict[str, str],
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
    fcm: FakeFcmServer,
    tmp_path: Path,
) -> None:
    """On Redis and on RabbitMQ (CELERY_BROKER_URL=amqp://…) alike."""
    broker_url, sender = broker
    tokens = {device().push_token for _ in range(60)}
    device(promotional=False)
    fcm.delay = 0.01  # long enough for both workers to get chunks
    env = worker_env(
        CELERY_BROKER_URL=broker_url, DISPATCH_CHUNK_SIZE="5", DISPATCH_ENUMERATE_BATCH="20"
    )
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    with running_worker("w1", env, queue, logs[0]), running_worker("w2", env, queue, logs[1]):
        campaign_id = create_campaign()
        response = sender.test_client().post(f"/v1/campaigns/{campaign_id}/send", headers=marketing)
        assert response.status_code == 202
        wait_for(lambda: campaign_status(app, campaign_id) == "completed", 60, 0.1)
    output = [log.read_text() for log in logs]
    assert campaign_status(app, campaign_id) == "completed", output
    scheme = broker_url.split(":", 1)[0]
    assert all(f"{scheme}://" in text for text in output), "the workers were on another broker"
    assert collections.Counter(m.token for m in fcm.received) == collections.Counter(
        dict.fromkeys(tokens, 1)
    )
    chunk_tasks = [text.count("mobile_api.dispatch.chunk[") for text in output]
    assert all(chunk_tasks), f"both workers should have processed chunks: {chunk_tasks}"
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert counts["targeted"] == 61
    assert counts["sent"] == 60
    assert counts["suppressed"] == {"promotional_opt_out": 1}


def test_a_campaign_waiting_in_a_long_queue_gets_one_recovery_not_one_per_sweep(
    app: Flask,
    client: FlaskClient,
    worker_env: WorkerEnv,
    queue: str,
    marketing: dict[str, str],
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
    fcm: FakeFcmServer,
    tmp_path: Path,
) -> None:
    from mobile_api import tasks
    from models import utcnow

    tokens = {device().push_token for _ in range(12)}
    campaign_id = create_campaign()
    assert client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing).status_code == 202
    assert waiting_messages(queue) == 1  # its task, with no worker to take it yet
    with app.app_context():
        # Twenty minutes in a long queue: no enumeration, claim or record since.
        db.session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(queued_at=utcnow() - timedelta(minutes=20))
        )
        db.session.commit()
        for _ in range(3):
            tasks.sweep.apply()
        db.session.remove()
    assert waiting_messages(queue) == 2  # the task, and one recovery behind it

    log = tmp_path / "worker.log"
    with running_worker("w1", worker_env(), queue, log):
        wait_for(lambda: campaign_status(app, campaign_id) == "completed", 60, 0.1)
    output = log.read_text()
    assert campaign_status(app, campaign_id) == "completed", output
    assert "mobile_api.dispatch.recover[" in output
    assert collections.Counter(m.token for m in fcm.received) == collections.Counter(
        dict.fromkeys(tokens, 1)
    )
    with app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        assert campaign is not None
        assert campaign.recovery_queued_at is None  # it found the campaign progressing: done
        db.session.remove()


def test_a_celery_worker_builds_its_push_transport_as_it_starts(
    app: Flask,
    worker_env: WorkerEnv,
    fcm_settings: dict[str, Any],
    queue: str,
    tmp_path: Path,
) -> None:
    """A bad FCM_CREDENTIALS stops the worker at once, not at its first chunk."""
    bad = tmp_path / "not-a-service-account.json"
    bad.write_text('{"type": "service_account"}')
    log = tmp_path / "bad.log"
    worker = start_worker("bad", worker_env(FCM_CREDENTIALS=str(bad)), queue, log)
    try:
        code = worker.wait(timeout=60)
    finally:
        worker.kill()
    assert code != 0
    assert f"FCM_CREDENTIALS '{bad}' is not a usable service-account file" in log.read_text()

    log = tmp_path / "good.log"
    with running_worker("good", worker_env(), queue, log):
        wait_for(lambda: ready(log), 60, 0.1)
    output = log.read_text()
    assert " ready." in output, output
    # Built in the worker and again in its pool process, before any task arrived.
    assert (
        output.count(
            f"push transport: fcm (project {PROJECT}, endpoint {fcm_settings['FCM_ENDPOINT']})"
        )
        == 2
    ), output


def _running_chunks(log: Path) -> int:
    lines = [line for line in log.read_text().splitlines() if "mobile_api.dispatch.chunk[" in line]
    return sum("received" in line for line in lines) - sum("succeeded" in line for line in lines)


def test_a_killed_celery_workers_chunk_is_taken_over_within_the_lease(
    app: Flask,
    client: FlaskClient,
    worker_env: WorkerEnv,
    queue: str,
    marketing: dict[str, str],
    create_campaign: Callable[..., str],
    device: Callable[..., Made],
    fcm: FakeFcmServer,
    tmp_path: Path,
) -> None:
    """kill -9 of a worker mid-chunk: its task comes back, its rows are sent again.

    Scaled: a visibility timeout of 2 s and a lease of 1 s stand for the defaults of
    30 s each (taken over within 60 s).
    """
    tokens = {device().push_token for _ in range(40)}
    fcm.delay = 0.2  # a chunk is in flight for most of its task
    env = worker_env(
        DISPATCH_CHUNK_SIZE="5",
        DISPATCH_ENUMERATE_BATCH="40",
        DISPATCH_CLAIM_LEASE_SECONDS="1",
        CELERY_VISIBILITY_TIMEOUT="2",
    )
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    doomed, survivor = (start_worker(f"w{i}", env, queue, log) for i, log in enumerate(logs, 1))
    try:
        assert wait_for(lambda: ready(*logs), 60)
        campaign_id = create_campaign()
        assert (
            client.post(f"/v1/campaigns/{campaign_id}/send", headers=marketing).status_code == 202
        )
        assert wait_for(lambda: _running_chunks(logs[0]) > 0, 30), logs[0].read_text()
        time.sleep(0.1)  # into its hand-off, which FCM answers after 0.2 s
        kill_hard(doomed)
        killed_at = time.monotonic()
        done = wait_for(lambda: campaign_status(app, campaign_id) == "completed", 60, 0.1)
        taken_over_in = time.monotonic() - killed_at
    finally:
        kill_hard(doomed)
        stop(survivor)
    assert done, logs[1].read_text()
    assert taken_over_in < 2 + 1 + 1 + 10  # visibility, restore, lease, then sending
    assert_handed_over(fcm, tokens)  # in flight at the kill: twice at most, same identity
    counts = client.get(f"/v1/campaigns/{campaign_id}", headers=marketing).get_json()["counts"]
    assert (counts["targeted"], counts["sent"], counts["failed"]) == (40, 40, 0)


def _nice(pid: int) -> int:
    """A process's niceness (Linux /proc: field 19 of stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def test_a_campaign_worker_yields_the_cpu_and_a_notification_worker_does_not(
    app: Flask, worker_env: WorkerEnv, queue: str, tmp_path: Path
) -> None:
    """DISPATCH_CAMPAIGN_NICE: campaigns-only workers run niced; one taking notifications not."""
    env = worker_env(DISPATCH_CAMPAIGN_NICE="7")
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    started = {
        name: (start_worker(name, env, only, tmp_path / f"{name}.log"), tmp_path / f"{name}.log")
        for name, only in (
            ("campaigns", queue),
            ("notifications", tasks.notification_queue(app)),
            ("both", None),
        )
    }
    try:
        wait_for(lambda: ready(*(log for _, log in started.values())), timeout=60)
        nice = {name: _nice(worker.pid) for name, (worker, _) in started.items()}
    finally:
        for worker, _ in started.values():
            worker.terminate()
        for worker, _ in started.values():
            worker.wait(timeout=10)
    assert nice == {"campaigns": max(ours, 7), "notifications": ours, "both": ours}
