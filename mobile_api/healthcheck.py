"""Container health by role: `python -m mobile_api.healthcheck [--pid N]` exits 0 if healthy.

One image runs the web server, the embedded dispatcher or a Celery worker, so the
check looks at what the container runs (PID 1's command line, which also holds the
command under `docker run --init`): the web server must answer /healthz on $PORT; a
dispatcher or Celery worker must have touched HEARTBEAT_FILE within
HEARTBEAT_MAX_AGE_SECONDS (it does so every HEARTBEAT_SECONDS while its loop runs).
Anything else (a migration, Celery beat) has nothing to probe and counts as healthy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HEARTBEAT_SECONDS = 10.0  # how often a dispatcher touches its heartbeat file
DEFAULT_MAX_AGE_SECONDS = 300.0  # a dispatch pass may legitimately take minutes


def role(argv: Sequence[str]) -> str:
    """ "web", "dispatcher" or "other", from a command line."""
    words = " ".join(os.path.basename(arg) for arg in argv)
    if "gunicorn" in words:
        return "web"
    if "dispatch worker" in words or ("celery" in words and " worker" in words):
        return "dispatcher"
    return "other"


def beat(path: str | None) -> None:
    """Touch the heartbeat file (no file configured: nothing to do)."""
    if path:
        Path(path).touch()


def heartbeat_age(path: str, now: float | None = None) -> float | None:
    """Seconds since the file was touched, or None if it does not exist."""
    try:
        touched = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - touched


def check(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[bool, str]:
    """(healthy, why) for a process running `argv` with settings from `environ`."""
    kind = role(argv)
    if kind == "web":
        url = f"http://127.0.0.1:{environ.get('PORT', '8000')}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=4) as response:
                return response.status == 200, f"{url}: {response.status}"
        except OSError as exc:
            return False, f"{url}: {exc}"
    if kind == "dispatcher":
        path = environ.get("HEARTBEAT_FILE")
        if not path:
            return False, "HEARTBEAT_FILE is not set: the dispatcher's liveness is unknown"
        max_age = float(environ.get("HEARTBEAT_MAX_AGE_SECONDS", DEFAULT_MAX_AGE_SECONDS))
        age = heartbeat_age(path)
        if age is None:
            return False, f"{path}: no heartbeat yet"
        return age <= max_age, f"{path}: last heartbeat {age:.0f} s ago (limit {max_age:.0f} s)"
    return True, "nothing to probe for this command"


def command_line(pid: int) -> list[str]:
    """The argv of process `pid`, from /proc."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def main(args: Any = None) -> int:
    """Check the process `--pid` (default 1, the container's command); 0 if healthy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pid", type=int, default=1)
    options = parser.parse_args(args)
    healthy, why = check(command_line(options.pid), os.environ)
    print(why, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
