"""The image's healthcheck by role: web answers /healthz, a dispatcher keeps a heartbeat."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from mobile_api import healthcheck
from tests.conftest import REDIS_DEFAULT
from tests.processes import free_port, stop, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["gunicorn", "--config", "gunicorn.conf.py", "--bind", "0.0.0.0:8000", "wsgi:app"], "web"),
        (["sh", "-c", "rm -rf /tmp/p && exec gunicorn --config gunicorn.conf.py wsgi:app"], "web"),
        (
            ["/opt/venv/bin/python", "/opt/venv/bin/flask", "--app", "wsgi", "dispatch", "worker"],
            "dispatcher",
        ),
        (["/sbin/docker-init", "--", "flask", "--app", "wsgi", "dispatch", "worker"], "dispatcher"),
        (["python", "/opt/venv/bin/celery", "--app", "wsgi.celery", "worker"], "dispatcher"),
        (["python", "/opt/venv/bin/celery", "--app", "wsgi.celery", "beat"], "other"),
        (["flask", "--app", "wsgi", "db", "upgrade"], "other"),
    ],
)
def test_role_of_a_command_line(argv: list[str], expected: str) -> None:
    assert healthcheck.role(argv) == expected


def _healthcheck(pid: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mobile_api.healthcheck", "--pid", str(pid)],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def _until_healthy(pid: int, timeout: float = 60, **env: str) -> None:
    deadline = time.monotonic() + timeout
    while (result := _healthcheck(pid, **env)).returncode != 0:
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.5)


@pytest.fixture
def spawn(app: Flask, tmp_path: Path) -> Iterator[Spawn]:
    """Start a command of .venv/bin on the test's database; stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, **env: str) -> subprocess.Popen[bytes]:
        settings = {
            "PATH": os.environ["PATH"],
            "SECRET_KEY": "test-secret-key",
            "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
            "GEOCODER_LIMITER_FILE": str(tmp_path / "geocoder-slot"),
            **env,
        }
        log = (tmp_path / f"{argv[0]}.log").open("wb")
        process = subprocess.Popen(
            [str(VENV_BIN / argv[0]), *argv[1:]],
            cwd=ROOT,
            env=settings,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        stop(process)


def test_a_dispatcher_is_healthy_while_its_loop_runs(spawn: Spawn, tmp_path: Path) -> None:
    heartbeat = str(tmp_path / "heartbeat")
    closed_port = str(free_port())  # the old check polled the web port: always unhealthy
    worker = spawn("flask", "--app", "wsgi", "dispatch", "worker", HEARTBEAT_FILE=heartbeat)
    env = {"HEARTBEAT_FILE": heartbeat, "PORT": closed_port}

    _until_healthy(worker.pid, **env)

    # A stuck loop stops touching the file; past the limit the container is unhealthy.
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        os.utime(heartbeat, (time.time() - 120, time.time() - 120))
        result = _healthcheck(worker.pid, HEARTBEAT_MAX_AGE_SECONDS="60", **env)
        assert result.returncode == 1
        assert "last heartbeat" in result.stderr
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    _until_healthy(worker.pid, HEARTBEAT_MAX_AGE_SECONDS="60", **env)


def test_a_dispatcher_without_a_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    argv = ["flask", "--app", "wsgi", "dispatch", "worker"]
    assert not healthcheck.check(argv, {})[0]
    assert not healthcheck.check(argv, {"HEARTBEAT_FILE": str(tmp_path / "none")})[0]


def test_the_web_server_is_healthy_when_it_answers(spawn: Spawn) -> None:
    port = str(free_port())
    server = spawn("gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", server)

    assert _healthcheck(server.pid, PORT=port).returncode == 0
    assert _healthcheck(server.pid, PORT=str(free_port())).returncode == 1


@pytest.mark.redis
def test_a_celery_worker_keeps_a_heartbeat(spawn: Spawn, tmp_path: Path) -> None:
    heartbeat = str(tmp_path / "heartbeat")
    worker = spawn(
        "celery",
        "--app",
        "wsgi.celery",
        "worker",
        "--pool",
        "solo",
        CELERY_BROKER_URL=os.environ.get("TEST_REDIS_URL", REDIS_DEFAULT),
        CELERY_QUEUE=f"healthcheck-{uuid.uuid4().hex[:8]}",
        HEARTBEAT_FILE=heartbeat,
    )

    _until_healthy(worker.pid, HEARTBEAT_FILE=heartbeat)


def test_the_image_is_pinned_and_checks_health_by_role() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert base
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1])
    assert 'CMD ["python", "-m", "mobile_api.healthcheck"]' in dockerfile
    assert "HEARTBEAT_FILE=" in dockerfile
