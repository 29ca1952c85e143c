"""What the loopback fakes share: a threaded HTTP server on 127.0.0.1, run in a daemon thread.

A fake subclasses `LoopbackFake`, names its request handler (and, when the handler needs to see
the fake's own type, its `LoopbackServer` subclass), and its handlers reach the fake through
`self.server.fake`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self


class LoopbackServer(ThreadingHTTPServer):
    """A threaded server whose handler threads never keep the test process alive."""

    daemon_threads = True
    request_queue_size = 1024  # benchmarks open many connections at once
    fake: Any


class LoopbackFake:
    """Serves `handler` on 127.0.0.1 (a free port unless given) in a daemon thread.

    Use as a context manager, or call `start()` and `stop()`.
    """

    handler: ClassVar[type[BaseHTTPRequestHandler]]
    server_class: ClassVar[type[LoopbackServer]] = LoopbackServer
    thread_name: ClassVar[str] = "loopback-fake"

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._httpd: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind to 127.0.0.1 and serve in a daemon thread; returns self."""
        httpd = self.server_class(("127.0.0.1", self._port), self.handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # fast shutdown() between tests
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321."""
        return f"http://127.0.0.1:{self.port}"


class ScriptedAnswers:
    """Per-token answers of a push fake: an outage, `fail_times`, `behaviour[token]`, a prefix.

    A fake sets `errors` (kind → its wire answer), `prefixes` ((token prefix, kind), …),
    and calls `_scripted(token)` under its lock for the kind to answer ("ok" or a key
    of `errors`); `_outage_kind(clock())` tells whether a scripted outage answers instead.
    `hold()` makes every answer wait until `release()`: a slow or hung service.
    """

    errors: ClassVar[Mapping[str, Any]]
    prefixes: ClassVar[tuple[tuple[str, str], ...]]

    def __init__(self, behaviour: Mapping[str, str] | None = None) -> None:
        self.behaviour: dict[str, str] = dict(behaviour or {})
        self._failures: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self.clock = time.monotonic
        self._outage: tuple[float, float, str] | None = None  # (start, end, kind)
        self._released = threading.Event()
        self._released.set()

    def outage(self, seconds: float, kind: str = "unavailable", *, after: float = 0.0) -> None:
        """From `after` seconds on, answer every send `kind` for `seconds` (on `clock`)."""
        if kind not in self.errors:
            raise ValueError(f"unknown error kind {kind!r}")
        start = self.clock() + after
        with self._lock:
            self._outage = (start, start + seconds, kind)

    def in_outage(self) -> bool:
        """Whether a scripted outage is going on now."""
        with self._lock:
            return self._outage_kind(self.clock()) is not None

    def _outage_kind(self, now: float) -> str | None:
        if self._outage is None:
            return None
        start, end, kind = self._outage
        return kind if start <= now < end else None

    def hold(self) -> None:
        """Make every answer wait (the request received and recorded) until `release()`."""
        self._released.clear()

    def release(self) -> None:
        """Let held answers, and every later one, go out."""
        self._released.set()

    def _wait_for_release(self, timeout: float = 60.0) -> None:
        self._released.wait(timeout)

    def fail_times(self, token: str, times: int, kind: str = "unavailable") -> None:
        """Answer `kind` for the next `times` sends to `token`, then its usual answer."""
        if kind not in self.errors:
            raise ValueError(f"unknown error kind {kind!r}")
        with self._lock:
            self._failures[token] = [times, kind]

    def _scripted(self, token: str) -> str:
        return self._planned_failure(token) or self._behaviour(token)

    def _planned_failure(self, token: str) -> str | None:
        plan = self._failures.get(token)
        if not plan:
            return None
        plan[0] -= 1
        if plan[0] <= 0:
            del self._failures[token]
        return str(plan[1])

    def _behaviour(self, token: str) -> str:
        answer = self.behaviour.get(token)
        if answer is not None:
            if answer != "ok" and answer not in self.errors:
                raise ValueError(f"unknown behaviour {answer!r} for a token")
            return answer
        for prefix, kind in self.prefixes:
            if token.startswith(prefix):
                return kind
        return "ok"
