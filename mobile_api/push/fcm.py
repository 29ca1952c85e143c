"""The FCM transport: firebase-admin's send_each, without its hidden retries."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import firebase_admin
import google.auth.exceptions
import requests
from firebase_admin import _http_client, credentials, exceptions, messaging
from google.auth.transport import requests as google_auth_requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .base import (
    MAX_BATCH,
    Outcome,
    PushMessage,
    SendResult,
    check_batch,
    mask_token,
    parse_retry_after,
)

logger = logging.getLogger("mobile_api.push")

GOOGLE_FCM_BASE = "https://fcm.googleapis.com"

FCM_CONNECTIONS = 100  # per transport; firebase-admin pools as many for Google
_app_ids = itertools.count(1)


class FcmSetupError(RuntimeError):
    """firebase-admin's internals are not what this transport was written against."""


# Per-exception-type classification; subclasses come before their bases.
_CLASSIFICATION: tuple[tuple[type[exceptions.FirebaseError], Outcome, str], ...] = (
    (messaging.UnregisteredError, Outcome.INVALID_TOKEN, "unregistered"),
    (messaging.SenderIdMismatchError, Outcome.INVALID_TOKEN, "sender_id_mismatch"),
    (messaging.QuotaExceededError, Outcome.RETRY, "quota_exceeded"),
    (messaging.ThirdPartyAuthError, Outcome.FAILED, "third_party_auth_error"),
    (exceptions.ResourceExhaustedError, Outcome.RETRY, "quota_exceeded"),
    (exceptions.UnavailableError, Outcome.RETRY, "unavailable"),
    (exceptions.InternalError, Outcome.RETRY, "internal"),
    (exceptions.DeadlineExceededError, Outcome.RETRY, "transport_error"),
    # Our access token was refused: send() refreshes it before the next batch.
    (exceptions.UnauthenticatedError, Outcome.RETRY, "unauthenticated"),
    (exceptions.InvalidArgumentError, Outcome.FAILED, "invalid_argument"),
)


def classify(error: BaseException) -> SendResult:
    """Map one firebase-admin send exception to a SendResult."""
    http_response = getattr(error, "http_response", None)
    retry_after = None
    if http_response is not None:
        retry_after = parse_retry_after(http_response.headers.get("Retry-After"))
    elif isinstance(error, exceptions.UnavailableError | exceptions.DeadlineExceededError):
        # No HTTP response: the connection failed or timed out.
        return SendResult(Outcome.RETRY, "transport_error")
    if isinstance(error, exceptions.FirebaseError):
        for error_type, outcome, reason in _CLASSIFICATION:
            if isinstance(error, error_type):
                return SendResult(outcome, reason, retry_after)
    if isinstance(error, google.auth.exceptions.TransportError):
        return SendResult(Outcome.RETRY, "transport_error")
    if isinstance(error, google.auth.exceptions.RefreshError):
        if error.retryable:
            return SendResult(Outcome.RETRY, "transport_error")
        return SendResult(Outcome.FAILED, "auth_error")
    return SendResult(Outcome.FAILED, "unknown", retry_after)


def _no_retry_adapter(pool_maxsize: int, pool_block: bool = False) -> HTTPAdapter:
    # total=0 turns off urllib3's connect/read/status retries alike; a read retry
    # could even deliver a push twice, since messages:send is not idempotent.
    retry = Retry(total=0, connect=0, read=0, status=0, redirect=0, raise_on_status=False)
    return HTTPAdapter(
        pool_connections=1,
        pool_maxsize=pool_maxsize,
        pool_block=pool_block,
        max_retries=retry,
    )


class _LeanSession(requests.Session):
    """A Session whose JSON POSTs skip requests' per-call machinery.

    Session.request merges cookies, hooks, settings and environment into a fresh
    PreparedRequest, re-parses the URL and runs the redirect and cookie handling of
    Session.send, for every message: a quarter of the client's CPU per message here.
    A JSON POST (firebase-admin's messages:send) is prepared by hand and handed
    straight to the mounted adapter, with the session's headers, proxies and TLS
    settings; like the adapter's own urlopen it follows no redirect. Any other call
    takes requests' ordinary path.
    """

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """Send a JSON POST through the adapter; anything else as requests would."""
        payload = kwargs.get("json")
        if (
            args
            or payload is None
            or kwargs.get("data") is not None
            or not kwargs.keys() <= _LEAN_ARGUMENTS
            or not isinstance(method, str)
            or method.upper() != "POST"
            or not isinstance(url, str)
        ):
            return super().request(method, url, *args, **kwargs)
        try:
            body = json.dumps(payload, allow_nan=False).encode()
        except ValueError as error:  # what requests raises for the same payload
            raise requests.exceptions.InvalidJSONError(error) from error
        headers: requests.structures.CaseInsensitiveDict[str] = (
            requests.structures.CaseInsensitiveDict(cast(Mapping[str, str], self.headers))
        )
        headers.update(kwargs.get("headers") or {})
        headers.setdefault("Content-Type", "application/json")  # as requests does
        headers["Content-Length"] = str(len(body))
        prepared = requests.PreparedRequest()
        prepared.method = "POST"
        prepared.url = url
        prepared.headers = headers
        prepared.body = body
        prepared.hooks = {"response": []}
        response = self.get_adapter(url).send(
            prepared,
            timeout=kwargs.get("timeout"),
            verify=True if self.verify is None else self.verify,
            proxies=self.proxies,
            cert=self.cert,
        )
        # Reading the body releases the connection to the (blocking) pool.
        response.content  # noqa: B018
        return response


_LEAN_ARGUMENTS = frozenset({"json", "data", "headers", "timeout"})


class _FcmSession(google_auth_requests.AuthorizedSession, _LeanSession):
    """google-auth's AuthorizedSession (the access token on each request) over _LeanSession."""


def _configure_messaging_service(
    app: firebase_admin.App, endpoint: str | None, pool_maxsize: int
) -> requests.Session:
    """Point the app's messaging service at `endpoint` and strip its hidden retries.

    This is the only place that touches firebase-admin internals (pinned 7.7.0):
    - `_MessagingService._fcm_url`: the messages:send URL, built from the hard-coded
      `FCM_URL`. There is no public option for another endpoint.
    - `_MessagingService._client._session`: a google-auth AuthorizedSession whose
      adapters retry 500/503 up to 4 times with backoff (honouring Retry-After), retry
      connect and read errors once, and re-send on 401 after refreshing the token.
      The dispatcher owns retries, so we swap in a session without any of that
      (an _FcmSession, whose JSON POSTs also skip requests' per-call machinery).
    Any mismatch raises FcmSetupError rather than silently sending to Google or
    retrying behind the dispatcher's back.
    """
    get_service = getattr(messaging, "_get_messaging_service", None)
    if not callable(get_service):
        raise FcmSetupError("firebase_admin.messaging._get_messaging_service is gone")
    service = get_service(app)
    template = getattr(type(service), "FCM_URL", None)
    current_url = getattr(service, "_fcm_url", None)
    project_id = app.project_id
    if not isinstance(template, str) or current_url != template.format(project_id):
        raise FcmSetupError(
            "firebase-admin's messaging service no longer keeps its send URL in "
            "_fcm_url; refusing to guess where messages would go"
        )
    client = getattr(service, "_client", None)
    if not isinstance(client, _http_client.HttpClient) or not isinstance(
        getattr(client, "_session", None), requests.Session
    ):
        raise FcmSetupError("firebase-admin's messaging HTTP client has changed shape")

    base = (endpoint or GOOGLE_FCM_BASE).rstrip("/")
    session: requests.Session = _FcmSession(  # type: ignore[no-untyped-call]
        app.credential.get_credential(), refresh_status_codes=()
    )
    # requests re-reads proxy variables from os.environ on every request (a quarter
    # of the client's CPU per message here); resolve them once for the FCM host.
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(base))
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    session.verify = ca_bundle or True
    # send_each runs one thread per message (500 for a full batch). A non-blocking
    # pool smaller than that opens, then discards, a connection for each overflowing
    # thread; a blocking pool makes them queue for one of `pool_maxsize` kept-alive
    # connections instead (measured no slower than 500 connections on loopback).
    session.mount(base + "/", _no_retry_adapter(pool_maxsize, pool_block=True))
    session.mount("https://", _no_retry_adapter(10))
    session.mount("http://", _no_retry_adapter(10))
    old_session = client.session
    client._session = session
    old_session.close()
    if client.session is not session:
        raise FcmSetupError("firebase-admin's HttpClient ignores its _session attribute")
    if endpoint:
        service._fcm_url = f"{base}/v1/projects/{project_id}/messages:send"
    return session


def _to_fcm_message(message: PushMessage) -> messaging.Message:
    # firebase-admin validates only inside send_each, where one bad message would
    # sink the whole batch; check what it would refuse here, message by message.
    if not isinstance(message.token, str) or not message.token:
        raise ValueError("token must be a non-empty string")
    if not all(isinstance(v, str) for kv in message.data.items() for v in kv):
        raise ValueError("data keys and values must be strings")
    if message.ttl_seconds is not None and message.ttl_seconds < 0:
        raise ValueError("ttl_seconds must not be negative")
    high = message.priority == "high"
    apns_headers = {"apns-priority": "10" if high else "5", "apns-push-type": "alert"}
    if message.ttl_seconds is not None:
        # APNs wants an absolute expiry; "0" means "deliver now or never".
        expiry = int(time.time()) + message.ttl_seconds if message.ttl_seconds else 0
        apns_headers["apns-expiration"] = str(expiry)
    if message.collapse_key is not None:
        apns_headers["apns-collapse-id"] = message.collapse_key
    aps_extra = {}
    if message.ios_interruption_level is not None:
        aps_extra["interruption-level"] = message.ios_interruption_level
    fcm_message = messaging.Message(
        notification=messaging.Notification(
            title=message.title, body=message.body, image=message.image_url
        ),
        data=dict(message.data),
        android=messaging.AndroidConfig(
            ttl=message.ttl_seconds,
            collapse_key=message.collapse_key,
            priority="high" if high else "normal",
            notification=messaging.AndroidNotification(
                channel_id=message.android_channel_id, sound=message.sound
            ),
        ),
        apns=messaging.APNSConfig(
            headers=apns_headers,
            payload=messaging.APNSPayload(
                aps=messaging.Aps(
                    alert=messaging.ApsAlert(title=message.title, body=message.body),
                    sound=message.sound,
                    badge=message.badge,
                    mutable_content=True if message.image_url else None,
                    custom_data=aps_extra or None,
                )
            ),
            fcm_options=messaging.APNSFCMOptions(image=message.image_url)
            if message.image_url
            else None,
        ),
    )
    # firebase-admin 7.7 deprecates the `token=` argument in favour of `fid` (a
    # Firebase installation ID), but devices give us FCM registration tokens, which
    # FCM v1 still takes as `token`. Setting the attribute skips a per-message
    # DeprecationWarning; the field-level tests notice if it stops being sent.
    fcm_message.token = message.token
    return fcm_message


class FcmTransport:
    """Sends through FCM HTTP v1 with firebase-admin, one send_each per batch."""

    name = "fcm"
    max_batch = MAX_BATCH

    def __init__(
        self,
        credentials_path: str,
        project_id: str | None = None,
        endpoint: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        options: dict[str, Any] = {"httpTimeout": timeout}
        if project_id:
            options["projectId"] = project_id
        cert = credentials.Certificate(credentials_path)
        app_name = f"mobile_api.push-{os.getpid()}-{next(_app_ids)}"
        self._app = firebase_admin.initialize_app(cert, options, name=app_name)
        try:
            self._session = _configure_messaging_service(self._app, endpoint, FCM_CONNECTIONS)
        except BaseException:
            firebase_admin.delete_app(self._app)
            raise
        self.project_id: str = self._app.project_id
        self.endpoint = endpoint
        self._credential = cert.get_credential()
        self._token_session = requests.Session()
        self._token_request = functools.partial(
            google_auth_requests.Request(self._token_session), timeout=timeout
        )
        self._refresh_lock = threading.Lock()
        self._force_refresh = False
        self._closed = False

    def send(self, messages: Sequence[PushMessage]) -> list[SendResult]:
        """Send a batch of at most 500; results are in the same order as messages."""
        check_batch(messages, self.max_batch)
        results: list[SendResult | None] = [None] * len(messages)
        to_send: list[tuple[int, messaging.Message]] = []
        for index, message in enumerate(messages):
            try:
                to_send.append((index, _to_fcm_message(message)))
            except ValueError as error:  # firebase-admin validates while building
                logger.warning("push to %s refused locally: %s", mask_token(message.token), error)
                results[index] = SendResult(Outcome.FAILED, "invalid_argument")
        if to_send:
            for index, result in zip(
                (i for i, _ in to_send),
                self._send_each([m for _, m in to_send]),
                strict=True,
            ):
                results[index] = result
        return [r for r in results if r is not None]

    def _send_each(self, fcm_messages: list[messaging.Message]) -> list[SendResult]:
        try:
            self._ensure_access_token()
            batch = messaging.send_each(fcm_messages, app=self._app)
        except google.auth.exceptions.GoogleAuthError as error:
            logger.error("FCM batch of %s not sent: %s", len(fcm_messages), error)
            return [classify(error)] * len(fcm_messages)
        except ValueError as error:  # a payload firebase-admin refused to encode
            logger.error("FCM batch of %s refused: %s", len(fcm_messages), error)
            return [SendResult(Outcome.FAILED, "invalid_argument")] * len(fcm_messages)
        except exceptions.FirebaseError as error:
            # send_each raises only when a worker thread itself blew up.
            logger.error("FCM batch of %s failed as a whole: %s", len(fcm_messages), error)
            return [classify(error.cause or error)] * len(fcm_messages)
        # send_each keeps the order of messages, so response i is message i.
        results = [
            SendResult(Outcome.SENT, message_id=response.message_id)
            if response.exception is None
            else classify(response.exception)
            for response in batch.responses
        ]
        if any(r.error == "unauthenticated" for r in results):
            self._force_refresh = True
        return results

    def _ensure_access_token(self) -> None:
        # Refresh once here: otherwise each of send_each's threads refreshes the
        # expired token on its own, and a batch of 500 makes 500 token requests.
        with self._refresh_lock:
            if self._force_refresh or not self._credential.valid:
                self._credential.refresh(self._token_request)
                self._force_refresh = False

    def close(self) -> None:
        """Delete the firebase-admin app and close its connections."""
        if self._closed:
            return
        self._closed = True
        firebase_admin.delete_app(self._app)
        self._session.close()
        self._token_session.close()

    def __repr__(self) -> str:
        return f"FcmTransport(project_id={self.project_id!r}, endpoint={self.endpoint!r})"
