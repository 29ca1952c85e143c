"""A loopback APNs server: HTTP/2 over TLS (h2), with Apple's token-based authentication.

Each connection is served in its own thread by an `h2` state machine behind a TLS
socket whose certificate a test CA signed (`write_tls` writes the CA for the client
to trust through APNS_CA_FILE). Requests are checked as Apple does: `POST
/3/device/<token>`, a bearer JWT (ES256, `kid` = the key id, `iss` = the team, not
older than an hour, signed by the key `write_key` wrote), `apns-topic`. Answers per
device token: `fail_times`, else `behaviour[token]`, else a token prefix (`PREFIXES`),
else 200 with an `apns-id` (the client's, echoed, or a new one). An outage can be
scripted (`outage`): for a while every request is answered the same error.

Run standalone for benchmarks: `python -m tests.fakes.apns_server --port 9443 --dir D`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import ipaddress
import itertools
import json
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack as hpack_module
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.loopback import LoopbackFake, LoopbackServer, ScriptedAnswers

KEY_ID = "FAKEKEY123"
TEAM_ID = "FAKETEAM45"
TOPIC = "com.example.helpdesk"
MAX_AGE = 3600  # seconds: Apple refuses older provider tokens
MAX_PAYLOAD = 4096

# kind → (HTTP status, Apple's reason)
ERRORS: dict[str, tuple[int, str]] = {
    "bad_device_token": (400, "BadDeviceToken"),
    "unregistered": (410, "Unregistered"),
    "too_many_requests": (429, "TooManyRequests"),
    "internal": (500, "InternalServerError"),
    "unavailable": (503, "ServiceUnavailable"),
    "payload_too_large": (413, "PayloadTooLarge"),
    "topic_disallowed": (400, "TopicDisallowed"),
    "expired_provider_token": (403, "ExpiredProviderToken"),
}
# Device tokens are hex, so prefixes are hex too.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("badd", "bad_device_token"),
    ("dead", "unregistered"),
    ("cafe", "too_many_requests"),
    ("5e5e", "unavailable"),
)
RETRY_AFTER = "3"


@dataclass(frozen=True, slots=True)
class ReceivedNotification:
    """One request as the fake received it."""

    token: str
    headers: dict[str, str]
    payload: dict[str, Any] | None
    status: int
    reason: str | None
    apns_id: str | None
    claims: dict[str, Any] | None  # of the provider token, when it verified
    at: float = 0.0  # the fake's clock (monotonic) when it arrived


class _Handler(BaseHTTPRequestHandler):
    """Serves one TLS connection with h2 (BaseHTTPRequestHandler only for LoopbackFake)."""

    server: _Server

    def setup(self) -> None:
        """Finish the TLS handshake here, in the connection's thread, not in accept."""
        self.request.settimeout(30)
        self.request.do_handshake()
        self.server.fake._count_connection(self.request)

    def finish(self) -> None:
        """Nothing to flush: the server closes the socket."""

    def handle(self) -> None:
        """Run the HTTP/2 connection until the client closes it."""
        sock: ssl.SSLSocket = self.request
        fake = self.server.fake
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding="utf-8",
                # Benchmarks (strict=False) skip h2's per-header checks of the client.
                validate_inbound_headers=fake.strict,
                normalize_inbound_headers=fake.strict,
                validate_outbound_headers=fake.strict,
                normalize_outbound_headers=fake.strict,
            )
        )
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        while True:
            try:
                data = sock.recv(65536)
            except (OSError, TimeoutError):
                return
            if not data:
                return
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                sock.sendall(conn.data_to_send())
                return
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
                elif isinstance(event, h2.events.DataReceived):
                    if event.stream_id in streams:
                        streams[event.stream_id][1].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    request_headers, body = streams.pop(event.stream_id)
                    status, response_headers, response_body = fake._answer(
                        request_headers, bytes(body)
                    )
                    fake._wait_for_release()
                    if fake.delay:
                        time.sleep(fake.delay)
                    all_headers = [(":status", str(status)), *response_headers.items()]
                    conn.send_headers(event.stream_id, all_headers, end_stream=not response_body)
                    if response_body:
                        conn.send_data(event.stream_id, response_body, end_stream=True)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    sock.sendall(conn.data_to_send())
                    return
            outgoing = conn.data_to_send()
            if outgoing:
                sock.sendall(outgoing)


class _Server(LoopbackServer):
    fake: FakeApnsServer

    def get_request(self) -> tuple[socket.socket, Any]:
        """Wrap each accepted socket in TLS (the handshake runs in the handler thread)."""
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapped = self.fake.ssl_context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address


class FakeApnsServer(ScriptedAnswers, LoopbackFake):
    """A threaded loopback APNs server over TLS; use as a context manager."""

    handler = _Handler
    server_class = _Server
    thread_name = "fake-apns"
    errors = ERRORS
    prefixes = PREFIXES

    def __init__(
        self,
        directory: str | Path,
        behaviour: dict[str, str] | None = None,
        *,
        key_id: str = KEY_ID,
        team_id: str = TEAM_ID,
        topic: str = TOPIC,
        delay: float = 0.0,
        record: bool = True,
        strict: bool = True,
        port: int = 0,
        like: FakeApnsServer | None = None,
    ) -> None:
        """Serve from `directory` (key and CA written there), or share `like`'s key and CA."""
        LoopbackFake.__init__(self, port)
        ScriptedAnswers.__init__(self, behaviour)
        self.directory = Path(directory)
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self.delay = delay
        self.record = record
        self.strict = strict
        self.retry_after: str | None = RETRY_AFTER
        # Provider tokens issued before this (epoch seconds) are answered ExpiredProviderToken.
        self.expire_tokens_before = 0.0
        self.received: list[ReceivedNotification] = []
        self.attempts: Counter[str] = Counter()
        self.request_count = 0
        self.connections = 0
        self.provider_tokens: Counter[str] = Counter()  # each distinct JWT seen, with its uses
        # JWTs whose signature verified, with their claims: a client sends one for an hour.
        self._verified: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._open: list[ssl.SSLSocket] = []
        if like is not None:  # another host of the same Apple: one key, one CA
            self.key_file, self._public_key = like.key_file, like._public_key
            self.ca_file, self.ssl_context = like.ca_file, like.ssl_context
        else:
            self.key_file, self._public_key = write_key(self.directory / "AuthKey.p8")
            self.ca_file, self.ssl_context = write_tls(self.directory)

    @property
    def url(self) -> str:
        """Base URL, e.g. https://127.0.0.1:54321."""
        return f"https://127.0.0.1:{self.port}"

    def settings(self) -> dict[str, Any]:
        """App config that points both APNs hosts at this server and trusts its CA."""
        return {
            "APNS_KEY_FILE": str(self.key_file),
            "APNS_KEY_ID": self.key_id,
            "APNS_TEAM_ID": self.team_id,
            "APNS_TOPIC": self.topic,
            "APNS_ENDPOINT": self.url,
            "APNS_SANDBOX_ENDPOINT": self.url,
            "APNS_CA_FILE": str(self.ca_file),
            "APNS_TIMEOUT": 5.0,
        }

    def messages_for(self, token: str) -> list[ReceivedNotification]:
        """Every recorded request to `token`, oldest first."""
        with self._lock:
            return [m for m in self.received if m.token == token]

    def reset(self) -> None:
        """Forget recorded requests and counters (not behaviours)."""
        with self._lock:
            self.received.clear()
            self.attempts.clear()
            self.provider_tokens.clear()
            self.request_count = 0
            self.connections = 0

    def _count_connection(self, sock: ssl.SSLSocket) -> None:
        with self._lock:
            self.connections += 1
            self._open.append(sock)

    def drop_connections(self) -> None:
        """Cut every open client connection at the TCP level, as a lost network would."""
        with self._lock:
            open_sockets, self._open = self._open, []
        for sock in open_sockets:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)

    def _check_auth(self, authorization: str | None) -> tuple[str | None, dict[str, Any] | None]:
        """(Apple's refusal reason or None, the verified claims)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return "MissingProviderToken", None
        token = authorization[len("bearer ") :]
        claims = self._verified.get(token)
        if claims is None:
            try:
                header = jwt.get_unverified_header(token)
                claims = jwt.decode(
                    token,
                    self._public_key,
                    algorithms=["ES256"],
                    options={"require": ["iss", "iat"], "verify_iat": True},
                )
            except jwt.PyJWTError:
                return "InvalidProviderToken", None
            if header.get("kid") != self.key_id or claims.get("iss") != self.team_id:
                return "InvalidProviderToken", claims
            self._verified[token] = claims
        with self._lock:
            self.provider_tokens[token] += 1
        issued = float(claims["iat"])
        if time.time() - issued > MAX_AGE or issued < self.expire_tokens_before:
            return "ExpiredProviderToken", claims
        return None, claims

    def _answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        path = headers.get(":path", "")
        token = path.rsplit("/", 1)[-1] if path.startswith("/3/device/") else ""
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
        refusal, claims = self._check_auth(headers.get("authorization"))
        status = 200
        reason = refusal
        payload: dict[str, Any] | None = None
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        with self._lock:
            now = self.clock()
            self.request_count += 1
            if headers.get(":method") != "POST" or not token:
                status, reason = 404, "BadPath"
            elif refusal is not None:
                status = 403
            elif headers.get("apns-topic") != self.topic:
                status, reason = 400, "TopicDisallowed"
            elif len(body) > MAX_PAYLOAD:
                status, reason = 413, "PayloadTooLarge"
            elif not isinstance(payload, dict) or "aps" not in payload:
                status, reason = 400, "PayloadEmpty"
            else:
                answer = self._outage_kind(now) or self._scripted(token)
                if answer != "ok":
                    status, reason = ERRORS[answer]
            if self.record:
                self.attempts[token] += 1
                self.received.append(
                    ReceivedNotification(
                        token,
                        {k: v for k, v in headers.items() if not k.startswith(":")},
                        payload,
                        status,
                        reason,
                        apns_id if status == 200 else None,
                        claims,
                        now,
                    )
                )
        response_headers = {"apns-id": apns_id}
        if status == 200:
            return status, response_headers, b""
        if status == 429 and self.retry_after is not None:
            response_headers["retry-after"] = self.retry_after
        answer_body: dict[str, Any] = {"reason": reason}
        if status == 410:
            answer_body["timestamp"] = int(time.time() * 1000)
        response_headers["content-type"] = "application/json"
        return status, response_headers, json.dumps(answer_body).encode()


def apns_token(prefix: str = "") -> str:
    """A fresh 64-hex-character APNs device token starting with `prefix` (hex).

    Without a prefix the token never starts with one the fake scripts: a random token
    beginning `badd` (4 in 65,536) would be answered BadDeviceToken.
    """
    while True:
        token = (prefix + uuid.uuid4().hex + uuid.uuid4().hex)[:64]
        if prefix or not any(token.startswith(scripted) for scripted, _ in PREFIXES):
            return token


def write_key(path: Path) -> tuple[Path, ec.EllipticCurvePublicKey]:
    """Write a P-256 signing key as Apple's .p8 (PKCS#8 PEM); returns it and its public half."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key.public_key()


def write_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """Make a test CA and a 127.0.0.1/localhost certificate it signs.

    Returns the CA's PEM (for the client to trust) and a server context offering h2.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake APNs test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "apns-test-ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "apns-server.pem"
    cert_file.write_bytes(
        server_cert.public_bytes(serialization.Encoding.PEM)
        + server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file)
    context.set_alpn_protocols(["h2"])
    return ca_file, context


def _decode_repeated_headers_once() -> None:
    """Memoize HPACK's Huffman decoding in this process (the standalone bench server only).

    h2 marks `authorization` never-indexed, so the same provider token arrives
    Huffman-coded on every request and pure-Python decoding of it was the fake's
    largest cost: on a shared 2-core box the fake's CPU is taken from the dispatcher
    it measures. Apple's servers are not on the dispatcher's machine. The decoding is a
    pure function, so answers are unchanged.
    """
    hpack_module.decode_huffman = functools.lru_cache(maxsize=1024)(hpack_module.decode_huffman)


def main() -> None:
    """Serve in the foreground (for benchmarks against a separate process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--dir", required=True, help="where the key and CA are written")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    _decode_repeated_headers_once()
    server = FakeApnsServer(
        args.dir, port=args.port, delay=args.delay, record=False, strict=False
    ).start()
    print(json.dumps(server.settings()), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
