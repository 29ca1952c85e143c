"""The APNs transport: HTTP/2 with token-based authentication, through httpcore.

One transport per APNs host (production for `apns`, the sandbox for `apns_sandbox`).
Each owns an event loop in a daemon thread and an httpcore connection pool (httpx's
HTTP/2 engine) on it, so the synchronous dispatcher hands a batch over with one
call, and the batch goes out as concurrent streams multiplexed over one HTTP/2
connection instead of one request at a time. httpcore is used without httpx's
client layer (redirects, cookies, auth flows, URL models), which APNs needs none of
and which cost a third of the CPU per message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import httpcore
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .base import (
    APNS,
    APNS_SANDBOX,
    MAX_BATCH,
    Outcome,
    PushMessage,
    PushTransport,
    Reason,
    SendResult,
    check_batch,
    mask_token,
    parse_retry_after,
)

logger = logging.getLogger("mobile_api.push")

# Apple refuses a provider token older than an hour, and one replaced more often
# than every 20 minutes (TooManyProviderTokenUpdates): renew between the two.
TOKEN_REFRESH_SECONDS = 40 * 60
# APNs device tokens: hex (64 characters today; Apple says they may grow).
DEVICE_TOKEN = re.compile(r"^[0-9a-fA-F]{64,4096}$")
MAX_PAYLOAD = 4096  # bytes, for alert notifications
_APPLE_REASON = re.compile(r"^[A-Za-z]{1,64}$")
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")
_NOT_SENT = SendResult(Outcome.RETRY, Reason.TRANSPORT_ERROR)  # placeholder, always replaced
# Streams in flight at once on the connection: Apple allows up to 1000, but
# httpcore re-scans its queue of waiting requests for each one, so a deep queue
# costs more CPU than it saves in round trips.
IN_FLIGHT = 64

# Apple's reasons → (outcome, our reason); any other refusal fails with its own
# reason in snake_case (TopicDisallowed → topic_disallowed).
_REASONS: dict[str, tuple[Outcome, str]] = {
    "BadDeviceToken": (Outcome.INVALID_TOKEN, Reason.BAD_DEVICE_TOKEN),
    "Unregistered": (Outcome.INVALID_TOKEN, Reason.UNREGISTERED),
    "ExpiredToken": (Outcome.INVALID_TOKEN, Reason.UNREGISTERED),
    "TooManyRequests": (Outcome.RETRY, Reason.QUOTA_EXCEEDED),
    "InternalServerError": (Outcome.RETRY, Reason.INTERNAL),
    "ServiceUnavailable": (Outcome.RETRY, Reason.UNAVAILABLE),
    "Shutdown": (Outcome.RETRY, Reason.UNAVAILABLE),
    # Our provider token aged out: renewed at once, the message tried again later.
    "ExpiredProviderToken": (Outcome.RETRY, Reason.UNAUTHENTICATED),
    "TooManyProviderTokenUpdates": (Outcome.RETRY, Reason.UNAUTHENTICATED),
    "InvalidProviderToken": (Outcome.FAILED, Reason.AUTH_ERROR),
    "MissingProviderToken": (Outcome.FAILED, Reason.AUTH_ERROR),
    "PayloadTooLarge": (Outcome.FAILED, Reason.PAYLOAD_TOO_LARGE),
    "TopicDisallowed": (Outcome.FAILED, Reason.TOPIC_DISALLOWED),
}


def classify(status: int, body: bytes, headers: Mapping[str, str]) -> SendResult:
    """Map one APNs answer to a SendResult."""
    if status == 200:
        return SendResult(Outcome.SENT, message_id=headers.get("apns-id"))
    apple_reason = ""
    try:
        answer = json.loads(body) if body else {}
        if isinstance(answer, dict) and isinstance(answer.get("reason"), str):
            apple_reason = answer["reason"]
    except ValueError:
        pass
    retry_after = parse_retry_after(headers.get("retry-after"))
    known = _REASONS.get(apple_reason)
    if known is not None:
        outcome, reason = known
        return SendResult(outcome, reason, retry_after)
    if status == 410:
        return SendResult(Outcome.INVALID_TOKEN, Reason.UNREGISTERED)
    if status == 429:
        return SendResult(Outcome.RETRY, Reason.QUOTA_EXCEEDED, retry_after)
    if status >= 500:
        return SendResult(Outcome.RETRY, Reason.UNAVAILABLE, retry_after)
    if _APPLE_REASON.match(apple_reason):
        return SendResult(Outcome.FAILED, _SNAKE.sub("_", apple_reason).lower())
    return SendResult(Outcome.FAILED, Reason.UNKNOWN)


class ProviderToken:
    """The ES256 JWT APNs authenticates us by, renewed before Apple's one-hour limit."""

    def __init__(self, key: EllipticCurvePrivateKey, key_id: str, team_id: str) -> None:
        self._key = key
        self.key_id = key_id
        self.team_id = team_id
        self._lock = threading.Lock()
        self._token = ""
        self._issued_at = 0.0

    @classmethod
    def from_file(cls, path: str, key_id: str, team_id: str) -> ProviderToken:
        """Load the .p8 key Apple issued (PKCS#8 PEM, P-256)."""
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, EllipticCurvePrivateKey):
            raise ValueError("APNS_KEY_FILE is not an EC (P-256) private key")
        return cls(key, key_id, team_id)

    def current(self) -> str:
        """The token to send now, signing a new one when it is due."""
        with self._lock:
            if not self._token or time.time() - self._issued_at >= TOKEN_REFRESH_SECONDS:
                self._sign()
            return self._token

    def renew(self, refused: str) -> None:
        """Sign a new token unless `refused` was replaced already (every stream reports it)."""
        with self._lock:
            if refused == self._token:
                self._sign()

    def _sign(self) -> None:
        now = int(time.time())
        self._token = jwt.encode(
            {"iss": self.team_id, "iat": now},
            self._key,
            algorithm="ES256",
            headers={"kid": self.key_id},
        )
        self._issued_at = now


def payload(message: PushMessage) -> bytes:
    """The notification's JSON: the alert in `aps`, the data as custom keys beside it."""
    aps: dict[str, Any] = {"alert": {"title": message.title, "body": message.body}}
    if message.ios_interruption_level:
        aps["interruption-level"] = message.ios_interruption_level
    body: dict[str, Any] = {key: value for key, value in message.data.items() if key != "aps"}
    body["aps"] = aps
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def headers(message: PushMessage, topic: str, now: float) -> dict[str, str]:
    """The apns-* request headers of a message (authorization is added per request)."""
    result = {
        "apns-topic": topic,
        "apns-push-type": "alert",
        "apns-priority": "10" if message.priority == "high" else "5",
    }
    if message.ttl_seconds is not None:
        # An absolute expiry; "0" means deliver now or never.
        expiry = int(now) + message.ttl_seconds if message.ttl_seconds else 0
        result["apns-expiration"] = str(expiry)
    # The message's identity on the device (a re-sent copy replaces the first), else
    # the campaign's collapse key.
    collapse = message.collapse_id or message.collapse_key
    if collapse:
        result["apns-collapse-id"] = collapse
    return result


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    return context


class ApnsTransport:
    """Sends to one APNs host over HTTP/2, a batch as concurrent streams."""

    max_batch = MAX_BATCH

    def __init__(
        self,
        name: str,
        endpoint: str,
        topic: str,
        token: ProviderToken,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.topic = topic
        self.timeout = timeout
        self._token = token
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"push-{name}", daemon=True
        )
        self._thread.start()
        base = httpcore.URL(self.endpoint)
        self._scheme, self._host_bytes, self._port = base.scheme, base.host, base.port
        self._host = base.host.decode()
        self._authority = f"{self._host}:{base.port}" if base.port else self._host
        # Each request's URL is built from these parts, not parsed again from a string.
        self._device_path = base.target.rstrip(b"/") + b"/3/device/"
        self._timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        context = _ssl_context(ca_file)
        self._pool = self._call(self._make_pool(context), timeout)
        self._closed = False

    async def _make_pool(self, context: ssl.SSLContext) -> httpcore.AsyncConnectionPool:
        # Built on the transport's loop: the connection belongs to it.
        return httpcore.AsyncConnectionPool(
            ssl_context=context, http1=False, http2=True, max_connections=1
        )

    def _call(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def send(self, messages: Sequence[PushMessage]) -> list[SendResult]:
        """Send a batch of at most 500; results are in the same order as messages."""
        check_batch(messages, self.max_batch)
        if not messages:
            return []
        # Every stream is bounded by the timeouts (connect, write, read) and at most
        # IN_FLIGHT run at once, so a batch ends within its waves of them; the bound
        # here only guards against a loop that stopped answering.
        waves = -(-len(messages) // IN_FLIGHT)
        future = asyncio.run_coroutine_threadsafe(self._send_all(messages), self._loop)
        try:
            results: list[SendResult] = future.result(self.timeout * 3 * (waves + 1))
        except FutureTimeout:
            future.cancel()
            logger.error("%s: a batch of %s did not finish in time", self, len(messages))
            return [SendResult(Outcome.RETRY, Reason.TRANSPORT_ERROR)] * len(messages)
        return results

    async def _send_all(self, messages: Sequence[PushMessage]) -> list[SendResult]:
        token = self._token.current()
        now = time.time()
        results: list[SendResult] = [_NOT_SENT] * len(messages)
        queue = iter(enumerate(messages))

        async def stream_one_by_one() -> None:
            # IN_FLIGHT of these share the batch: far fewer tasks and no semaphore to
            # wait on than one task per message.
            for index, message in queue:
                results[index] = await self._send_one(message, token, now)

        await asyncio.gather(*(stream_one_by_one() for _ in range(min(IN_FLIGHT, len(messages)))))
        if any(r.error == Reason.UNAUTHENTICATED for r in results):
            self._token.renew(token)
        failed = sum(r.error == Reason.TRANSPORT_ERROR for r in results)
        if failed:
            logger.warning("%s: %s of %s messages not handed over", self, failed, len(results))
        return results

    async def _send_one(self, message: PushMessage, token: str, now: float) -> SendResult:
        if not DEVICE_TOKEN.match(message.token):
            logger.warning("push to %s refused: not an APNs token", mask_token(message.token))
            return SendResult(Outcome.FAILED, Reason.INVALID_ARGUMENT)
        body = payload(message)
        if len(body) > MAX_PAYLOAD:
            return SendResult(Outcome.FAILED, Reason.PAYLOAD_TOO_LARGE)
        request_headers = headers(message, self.topic, now)
        request_headers["authorization"] = f"bearer {token}"
        request_headers["host"] = self._authority
        try:
            response = await self._pool.request(
                "POST",
                httpcore.URL(
                    scheme=self._scheme,
                    host=self._host_bytes,
                    port=self._port,
                    target=self._device_path + message.token.encode(),
                ),
                headers=list(request_headers.items()),
                content=body,
                extensions={"timeout": self._timeouts},
            )
        except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as error:
            # A lost connection fails every stream on it: one line per batch (_send_all).
            logger.debug("APNs push to %s: %r", mask_token(message.token), error)
            return SendResult(Outcome.RETRY, Reason.TRANSPORT_ERROR)
        answer = {name.decode().lower(): value.decode() for name, value in response.headers}
        return classify(response.status, response.content, answer)

    def close(self) -> None:
        """Close the HTTP/2 connection and stop the transport's loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._pool.aclose(), self.timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __str__(self) -> str:
        return f"{self.name} (topic {self.topic}, endpoint {self.endpoint})"

    def __repr__(self) -> str:
        return f"ApnsTransport({self.name!r}, endpoint={self.endpoint!r}, topic={self.topic!r})"


_REQUIRED = ("APNS_KEY_FILE", "APNS_KEY_ID", "APNS_TEAM_ID", "APNS_TOPIC")


def _configured(config: Mapping[str, Any]) -> bool:
    return all(config.get(key) for key in _REQUIRED)


def providers(config: Mapping[str, Any]) -> frozenset[str]:
    """apns and apns_sandbox when the key, key id, team and topic are all set; else none."""
    return frozenset({APNS, APNS_SANDBOX}) if _configured(config) else frozenset()


def build(config: Mapping[str, Any]) -> dict[str, PushTransport]:
    """One transport per APNs host, sharing the provider token; none when unconfigured."""
    if not _configured(config):
        return {}
    path = config["APNS_KEY_FILE"]
    try:
        token = ProviderToken.from_file(path, config["APNS_KEY_ID"], config["APNS_TEAM_ID"])
    except (OSError, ValueError, TypeError) as exc:
        raise RuntimeError(f"APNS_KEY_FILE {path!r} is not a usable .p8 key: {exc}") from exc
    built: dict[str, PushTransport] = {}
    try:
        for provider, endpoint in (
            (APNS, config["APNS_ENDPOINT"]),
            (APNS_SANDBOX, config["APNS_SANDBOX_ENDPOINT"]),
        ):
            built[provider] = ApnsTransport(
                provider,
                endpoint,
                config["APNS_TOPIC"],
                token,
                ca_file=config.get("APNS_CA_FILE"),
                timeout=float(config["APNS_TIMEOUT"]),
            )
    except BaseException:
        for transport in built.values():
            transport.close()
        raise
    return built
