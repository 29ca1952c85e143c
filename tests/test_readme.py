"""The README's commands, run as printed in new shells against a scratch copy of the tree.

A newcomer copies them one by one into a terminal: each must work there, bin/serve
included, without exporting anything first. The copy has its own instance/ (database,
secret key, metrics) and shares only .venv; HOME is a scratch directory too.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_DEFAULT
from tests.processes import background, free_port, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
# A command line of an indented README block: optional VAR=value words, then one of these.
_COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:bin/|\.venv/bin/|docker )")
# Commands this test does not run, and why.
NOT_RUN = {
    "bin/test": "it is the command running this test",
    "docker ": "no container engine runs on the CI machines (README: Docker)",
}
# Long-running commands: they must come up and keep running until stopped.
_DAEMONS = ("bin/serve", "dispatch worker", "celery", "gunicorn")
_TROUBLE = re.compile(r"Traceback|ERROR|CRITICAL|Cannot connect")


def readme_commands(text: str) -> list[str]:
    """The shell commands of the README's indented code blocks, continuations joined."""
    commands: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if pending:
            pending = f"{pending} {stripped.removesuffix(chr(92)).strip()}"
            if not stripped.endswith("\\"):
                commands.append(pending)
                pending = ""
        elif line.startswith("    ") and _COMMAND.match(stripped):
            if stripped.endswith("\\"):
                pending = stripped.removesuffix("\\").strip()
            else:
                commands.append(stripped)
    return commands


class Checkout:
    """A scratch copy of the source tree: its own instance/ and HOME, the real .venv."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.home = path.parent / "home"
        self.home.mkdir()
        self.logs = path.parent / "logs"
        self.logs.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        """A new login shell's environment: nothing of this test run's settings."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            **extra,
        }

    def run(
        self, command: str, timeout: float = 120, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """`command` in a new bash, as typed at the top of the checkout."""
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.path,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def log(self, name: str) -> Path:
        return self.logs / f"{re.sub(r'[^A-Za-z0-9]+', '-', name)[:60]}.log"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    """The tracked and new files of this tree, copied with their times and modes."""
    base = tmp_path_factory.mktemp("readme")
    target = base / "mobile_api"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(ROOT / ".venv")
    return Checkout(target)


@pytest.fixture(scope="module")
def served(checkout: Checkout) -> Iterator[int]:
    """bin/serve started as the README says, on a free PORT; yields the port."""
    port = free_port()
    env = checkout.env(PORT=str(port))
    with background("bin/serve", checkout.path, env, checkout.log("bin/serve")) as server:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", server)
        yield port
        assert server.poll() is None, checkout.log("bin/serve").read_text()


def _get(url: str, secret: str | None = None) -> Any:
    request = urllib.request.Request(url)  # noqa: S310 - loopback
    if secret:
        request.add_header("Authorization", f"Bearer {secret}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.status, response.read()


def _run_daemon(checkout: Checkout, command: str, url: str | None, queue: str) -> None:
    """Start a long-running command, check it serves (or stays up quietly), stop it."""
    log = checkout.log(command)
    env = checkout.env(CELERY_QUEUE=queue)
    with background(command, checkout.path, env, log) as process:
        if url:
            wait_for_http(url, process, context=_self_signed() if url.startswith("https") else None)
        else:
            time.sleep(6)
            assert process.poll() is None, log.read_text()
    output = log.read_text()
    assert not _TROUBLE.search(output), f"{command}\n{output}"


def _self_signed() -> ssl.SSLContext:
    """A client context that accepts the test's self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _tls_files(directory: Path) -> None:
    directory.mkdir()
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", directory / "tls.key", "-out", directory / "tls.crt"],
        check=True,
        capture_output=True,
    )


@pytest.mark.slow
def test_every_readme_command_works_as_printed(checkout: Checkout, served: int) -> None:
    commands = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert commands[0] == "bin/serve"  # the `served` fixture runs it
    assert any("keys create" in command for command in commands)
    ports = {"8000": str(free_port()), "8443": str(free_port())}
    _tls_files(checkout.path.parent / "tls")
    key_ids: list[str] = []
    secrets: dict[str, str] = {}
    ran = []
    queue = f"readme-{served}"  # Celery: keeps the README's worker off other tests' tasks
    for printed in commands[1:]:
        if any(printed.startswith(prefix) for prefix in NOT_RUN):
            continue
        # What a newcomer would change: a free port, real key ids, the test's servers.
        command = printed.replace("/etc/mobile_api/", f"{checkout.path.parent}/tls/")
        command = command.replace(REDIS_DEFAULT, os.environ.get("TEST_REDIS_URL", REDIS_DEFAULT))
        for printed_port, port in ports.items():
            command = command.replace(f":{printed_port} ", f":{port} ")
        if key_ids:
            command = command.replace("KEY_ID", key_ids[0])
        if any(daemon in command for daemon in _DAEMONS):
            port = next((p for p in ports.values() if f":{p} " in command), None)
            scheme = "https" if "--certfile" in command else "http"
            url = port and f"{scheme}://127.0.0.1:{port}/healthz"
            _run_daemon(checkout, command, url, queue)
        else:
            result = checkout.run(command, CELERY_QUEUE=queue)
            assert result.returncode == 0, f"{printed}\n{result.stdout}\n{result.stderr}"
            if "keys create" in command:
                created = re.search(r"Created key (\S+) \(role (\w+)", result.stdout)
                assert created, result.stdout
                key_ids.append(created[1])
                secrets[created[2]] = result.stdout.strip().splitlines()[-1]
        ran.append(printed)

    assert len(ran) >= 12, ran
    # The keys the CLI made are the running server's: the admin key reads its audit trail.
    status, body = _get(f"http://127.0.0.1:{served}/v1/admin/audit", secrets["admin"])
    assert status == 200
    assert key_ids[0].encode() in body


def test_the_generated_secret_key_is_the_owners_alone(checkout: Checkout, served: int) -> None:
    secret_file = checkout.path / "instance" / "secret_key"
    assert secret_file.stat().st_mode & 0o777 == 0o600

    secret_file.chmod(0o644)
    try:
        result = checkout.run(".venv/bin/flask --app wsgi keys list")
    finally:
        secret_file.chmod(0o600)
    assert result.returncode != 0
    assert "chmod 600" in result.stderr


def test_a_second_server_on_a_taken_port_leaves_the_first_alone(
    checkout: Checkout, served: int
) -> None:
    metrics_dir = checkout.path / "instance" / f"prometheus-{served}"
    _get(f"http://127.0.0.1:{served}/healthz")
    before = sorted(p.name for p in metrics_dir.iterdir())
    assert before

    result = checkout.run("bin/serve", PORT=str(served))

    assert result.returncode != 0
    assert f"PORT={served + 1} bin/serve" in result.stderr
    assert sorted(p.name for p in metrics_dir.iterdir()) == before
    assert _get(f"http://127.0.0.1:{served}/healthz")[0] == 200


def test_gunicorn_claims_no_shared_control_socket(checkout: Checkout, served: int) -> None:
    # bin/serve's gunicorn runs with this HOME and no XDG_RUNTIME_DIR.
    assert not (checkout.home / ".gunicorn").exists()

    # Asked for, the socket is this deployment's own.
    own = checkout.path / "instance" / "gunicorn.ctl"
    port = free_port()
    command = f"GUNICORN_CONTROL_SOCKET={own} .venv/bin/gunicorn -c gunicorn.conf.py "
    command += f"--bind 127.0.0.1:{port} wsgi:app"
    with background(command, checkout.path, checkout.env(), checkout.log("ctl")) as process:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
        assert own.is_socket()
    assert not (checkout.home / ".gunicorn").exists()
