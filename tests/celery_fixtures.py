"""Fixtures for tests with real Celery workers: a queue of their own on Redis, the app, workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from tests.campaign_fixtures import close_transport, stop, subprocess_env
from tests.conftest import REDIS_DEFAULT, make_app, migrate_once, wipe

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", REDIS_DEFAULT)

WorkerEnv = Callable[..., dict[str, str]]


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue (and Redis key prefix) of this test run only; its keys are deleted after."""
    name = f"mobile_api-test-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield name
    for key in client.scan_iter(match=f"{name}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def app(postgres_url: str, fcm_settings: dict[str, Any], queue: str) -> Iterator[Flask]:
    """The web app on the scratch PostgreSQL database, with Celery on Redis."""
    built = make_app(
        postgres_url,
        **fcm_settings,
        CELERY_BROKER_URL=REDIS_URL,
        CELERY_QUEUE=queue,
        DISPATCH_CHUNK_SIZE=5,
    )
    migrate_once(built)
    yield built
    close_transport(built)
    wipe(built)


@pytest.fixture
def worker_env(postgres_url: str, fcm_settings: dict[str, Any], queue: str) -> WorkerEnv:
    """`worker_env(**extra)`: a worker's environment on the app's database, broker and queue.

    `extra` adds settings or overrides these (CELERY_BROKER_URL=amqp://… for RabbitMQ).
    """

    def env(**extra: str) -> dict[str, str]:
        return subprocess_env(
            postgres_url,
            fcm_settings,
            **{"CELERY_BROKER_URL": REDIS_URL, "CELERY_QUEUE": queue, **extra},
        )

    return env


def start_worker(
    name: str, env: dict[str, str], queue: str | None, log: Path, celery_app: str = "wsgi.celery"
) -> subprocess.Popen[Any]:
    """A Celery worker of queue `queue` (None: every queue of the deployment)."""
    # A session of its own: kill_hard takes its pool process with it.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "--app",
            celery_app,
            "worker",
            *(["-Q", queue] if queue else []),
            "-c",
            "1",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@contextlib.contextmanager
def running_worker(
    name: str, env: dict[str, str], queue: str | None, log: Path, celery_app: str = "wsgi.celery"
) -> Iterator[subprocess.Popen[Any]]:
    """start_worker for the `with` block; stopped as it ends (SIGTERM, kill -9 if it hangs)."""
    worker = start_worker(name, env, queue, log, celery_app)
    try:
        yield worker
    finally:
        stop(worker)


def ready(*logs: Path) -> bool:
    """Whether the worker of every log has said it is ready (its consumer is running)."""
    return all(" ready." in log.read_text() for log in logs)


def waiting_messages(queue: str, name: str | None = None) -> int:
    """Messages waiting in queue `name` (default: the deployment's queue itself)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.llen(f"{queue}:{name or queue}"))
    finally:
        client.close()
