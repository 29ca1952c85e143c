"""A loopback HTTP server that speaks enough of FCM v1 and OAuth2 for firebase-admin.

Answers per message are chosen by registration token: an explicit `behaviour[token]`,
else a token prefix (see `PREFIXES`), else success. Error bodies have the real FCM v1
shape, so firebase-admin's own parsing maps them to its typed exceptions.

An outage can be scripted (`outage`): for a while every send gets the same error,
whatever the token. Every hand-off is recorded with the identity it carried (Android
notification tag and collapse key, apns-collapse-id) and when it arrived.

Run standalone for benchmarks: `python -m tests.fakes.fcm_server --port 9099`
(`--outage-after 10 --outage-seconds 300` scripts an outage).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.loopback import LoopbackFake, LoopbackServer, ScriptedAnswers

ACCESS_TOKEN = "fake-access-token"
SEND_PATH_PREFIX = "/v1/projects/"
SEND_PATH_SUFFIX = "/messages:send"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

# kind -> (HTTP status, canonical status, FCM errorCode)
ERRORS: dict[str, tuple[int, str, str]] = {
    "unregistered": (404, "NOT_FOUND", "UNREGISTERED"),
    "sender_id_mismatch": (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
    "quota": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
    "unavailable": (503, "UNAVAILABLE", "UNAVAILABLE"),
    "internal": (500, "INTERNAL", "INTERNAL"),
    "invalid_argument": (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    "third_party_auth": (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
}
PREFIXES: tuple[tuple[str, str], ...] = (
    ("unreg-", "unregistered"),
    ("mismatch-", "sender_id_mismatch"),
    ("quota-", "quota"),
    ("unavail-", "unavailable"),
    ("internal-", "internal"),
    ("invalid-", "invalid_argument"),
    ("thirdparty-", "third_party_auth"),
)
QUOTA_RETRY_AFTER = "7"


def _error_body(kind: str) -> bytes:
    status, canonical, fcm_code = ERRORS[kind]
    error = {
        "code": status,
        "message": f"fake FCM error: {fcm_code}",
        "status": canonical,
        "details": [{"@type": FCM_ERROR_TYPE, "errorCode": fcm_code}],
    }
    return json.dumps({"error": error}).encode()


_REASONS = {status.value: status.phrase for status in HTTPStatus}
_ERROR_BODIES = {kind: _error_body(kind) for kind in ERRORS}
_UNAUTHENTICATED_BODY = json.dumps(
    {"error": {"code": 401, "message": "bad access token", "status": "UNAUTHENTICATED"}}
).encode()


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One messages:send request as the fake received it."""

    project: str
    token: str
    body: dict[str, Any]
    answer: str
    message_id: str | None
    headers: dict[str, str]  # names in lower case
    at: float = 0.0  # the fake's clock (monotonic) when it arrived

    @property
    def identity(self) -> tuple[str | None, str | None, str | None]:
        """(Android notification tag, Android collapse key, apns-collapse-id) it carried."""
        message = self.body["message"]
        android = message.get("android") or {}
        apns_headers = (message.get("apns") or {}).get("headers") or {}
        return (
            (android.get("notification") or {}).get("tag"),
            android.get("collapse_key"),
            apns_headers.get("apns-collapse-id"),
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: benchmarks push millions of requests through here."""

    def setup(self) -> None:
        """Count the connection (one handler serves one keep-alive connection)."""
        super().setup()
        self.server.fake._count_connection()

    def _reply(self, status: int, body: bytes, retry_after: str | None = None) -> None:
        # One write for status line, headers and body: split writes meet Nagle and
        # delayed ACKs and cost ~40 ms per keep-alive request.
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            "Content-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(body)}\r\n"
        )
        if retry_after is not None:
            head += f"Retry-After: {retry_after}\r\n"
        self.wfile.write(head.encode("latin-1") + b"\r\n" + body)

    def do_POST(self) -> None:
        """Serve the OAuth2 token endpoint and messages:send."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path
        fake = self.server.fake
        if path == "/token":
            fake._count_token_request()
            token_body = {
                "access_token": fake.access_token,
                "expires_in": 3600,
                "token_type": "Bearer",
            }
            self._reply(200, json.dumps(token_body).encode())
            return
        if not (path.startswith(SEND_PATH_PREFIX) and path.endswith(SEND_PATH_SUFFIX)):
            self._reply(404, b'{"error": {"code": 404, "status": "NOT_FOUND"}}')
            return
        if self.headers.get("Authorization") != f"Bearer {fake.access_token}":
            fake._count_rejected_auth()
            self._reply(401, _UNAUTHENTICATED_BODY)
            return
        body = json.loads(raw)
        token = body["message"].get("token", "")
        project = path[len(SEND_PATH_PREFIX) : -len(SEND_PATH_SUFFIX)]
        answer, message_id, outage = fake._answer(project, token, body, self.headers)
        fake._wait_for_release()
        if fake.delay:
            time.sleep(fake.delay)
        if message_id is not None:
            self._reply(200, b'{"name": "%s"}' % message_id.encode())
            return
        retry_after = fake.quota_retry_after if answer == "quota" else None
        if outage:
            retry_after = fake.outage_retry_after
        self._reply(ERRORS[answer][0], _ERROR_BODIES[answer], retry_after)

    def do_GET(self) -> None:
        """GET /stats: the fake's counters (benchmarks in another process read them)."""
        if self.path != "/stats":
            self._reply(HTTPStatus.NOT_FOUND, b"{}")
            return
        fake = self.server.fake
        with fake._lock:
            stats = {
                "requests": fake.request_count,
                "accepted": fake.accepted,
                "in_outage": fake._outage_kind(fake.clock()) is not None,
            }
        self._reply(HTTPStatus.OK, json.dumps(stats).encode())


class _Server(LoopbackServer):
    fake: FakeFcmServer


class FakeFcmServer(ScriptedAnswers, LoopbackFake):
    """A threaded loopback FCM v1 + OAuth2 server; use as a context manager."""

    handler = _Handler
    server_class = _Server
    thread_name = "fake-fcm"
    errors = ERRORS
    prefixes = PREFIXES

    def __init__(
        self,
        behaviour: dict[str, str] | None = None,
        *,
        delay: float = 0.0,
        record: bool = True,
        access_token: str = ACCESS_TOKEN,
        port: int = 0,
    ) -> None:
        LoopbackFake.__init__(self, port)
        ScriptedAnswers.__init__(self, behaviour)
        self.delay = delay
        self.quota_retry_after: str | None = QUOTA_RETRY_AFTER
        self.record = record
        self.access_token = access_token
        self.received: list[ReceivedMessage] = []
        self.attempts: Counter[str] = Counter()
        self.request_count = 0
        self.accepted = 0
        self.token_requests = 0
        self.rejected_auth = 0
        self.connections = 0
        self._ids = itertools.count(1)
        self.outage_retry_after: str | None = None

    @property
    def token_uri(self) -> str:
        """The OAuth2 token endpoint to put in a service-account file."""
        return f"{self.url}/token"

    def requests_between(self, start: float, end: float) -> int:
        """How many sends arrived in [start, end) on the fake's clock."""
        with self._lock:
            return sum(1 for m in self.received if start <= m.at < end)

    def messages_for(self, token: str) -> list[ReceivedMessage]:
        """Every recorded send to `token`, oldest first."""
        with self._lock:
            return [m for m in self.received if m.token == token]

    def reset(self) -> None:
        """Forget recorded requests and counters (not behaviours)."""
        with self._lock:
            self.received.clear()
            self.attempts.clear()
            self.request_count = 0
            self.accepted = 0
            self.token_requests = 0
            self.rejected_auth = 0
            self.connections = 0

    def _count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def _count_token_request(self) -> None:
        with self._lock:
            self.token_requests += 1

    def _count_rejected_auth(self) -> None:
        with self._lock:
            self.rejected_auth += 1

    def _answer(
        self, project: str, token: str, body: dict[str, Any], headers: Message
    ) -> tuple[str, str | None, bool]:
        with self._lock:
            self.request_count += 1
            now = self.clock()
            outage = self._outage_kind(now)
            answer = outage or self._scripted(token)
            message_id = None
            if answer == "ok":
                self.accepted += 1
                message_id = f"projects/{project}/messages/{next(self._ids)}"
            if self.record:
                self.attempts[token] += 1
                received = ReceivedMessage(
                    project,
                    token,
                    body,
                    answer,
                    message_id,
                    {k.lower(): v for k, v in headers.items()},
                    now,
                )
                self.received.append(received)
        return answer, message_id, outage is not None


@functools.cache
def _private_key_pem() -> str:
    # One key per process: RSA generation is slow and the fake accepts any assertion.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def write_service_account(
    path: str | Path, token_uri: str | FakeFcmServer, project_id: str = "fake-project"
) -> Path:
    """Write a self-made service-account JSON whose token_uri points at the fake."""
    if isinstance(token_uri, FakeFcmServer):
        token_uri = token_uri.token_uri
    pem = _private_key_pem()
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "fake-key-1",
        "private_key": pem,
        "client_email": f"push@{project_id}.iam.gserviceaccount.com",
        "client_id": "1",
        "auth_uri": "http://127.0.0.1/unused",
        "token_uri": token_uri,
    }
    target = Path(path)
    target.write_text(json.dumps(info), encoding="utf-8")
    return target


def main() -> None:
    """Serve in the foreground (for benchmarks against a separate process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9099)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--service-account", help="also write a credentials file here")
    parser.add_argument("--outage-after", type=float, default=0.0, help="seconds from start")
    parser.add_argument("--outage-seconds", type=float, default=0.0)
    parser.add_argument("--outage-kind", default="unavailable", choices=sorted(ERRORS))
    parser.add_argument("--outage-retry-after", default=None, help="Retry-After it sends")
    args = parser.parse_args()
    server = FakeFcmServer(port=args.port, delay=args.delay, record=False).start()
    if args.outage_seconds:
        server.outage_retry_after = args.outage_retry_after
        server.outage(args.outage_seconds, args.outage_kind, after=args.outage_after)
    if args.service_account:
        write_service_account(args.service_account, server)
    print(f"fake FCM listening on {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
