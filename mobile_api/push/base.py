"""The push transport interface shared by the FCM and log transports."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Literal, Protocol

MAX_BATCH = 500

Priority = Literal["normal", "high"]


@dataclass(frozen=True, slots=True)
class PushMessage:
    """One notification for one registration token."""

    token: str
    title: str
    body: str
    data: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    ttl_seconds: int | None = None
    collapse_key: str | None = None
    priority: Priority = "normal"
    # The message's identity on the device: Android's notification `tag` and APNs'
    # `apns-collapse-id`. A message handed over twice with the same one replaces
    # its first copy on the screen instead of showing a second.
    collapse_id: str | None = None
    # The category's Android notification channel and iOS interruption level, so the
    # user can silence one category in the OS; rich content of v1.1.
    android_channel_id: str | None = None
    ios_interruption_level: str | None = None
    image_url: str | None = None
    sound: str | None = None
    badge: int | None = None


# The FCM error reasons that mean the token is dead (Outcome.INVALID_TOKEN): the
# token is marked invalid, and the campaign counts it in invalid_tokens_pruned.
INVALID_TOKEN_ERRORS = frozenset({"unregistered", "sender_id_mismatch"})


class Outcome(StrEnum):
    """What the dispatcher should do with a message after a send."""

    SENT = "sent"
    # The token is dead (UNREGISTERED, SENDER_ID_MISMATCH): prune it.
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - an outcome name, not a secret
    # Transient: quota, unavailable, internal, transport errors and timeouts.
    RETRY = "retry"
    # Permanent for this message: invalid argument, APNs/web-push auth, anything else.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SendResult:
    """The fate of one message; `error` is a stable snake_case reason."""

    outcome: Outcome
    error: str | None = None
    retry_after: float | None = None
    message_id: str | None = None


class PushTransport(Protocol):
    """Hands messages to a push service, one result per message, in order.

    `send` never raises for per-message errors and never retries: the dispatcher owns
    the retry policy. It raises ValueError only for a batch larger than `max_batch`.
    """

    name: str
    max_batch: int

    def send(self, messages: Sequence[PushMessage]) -> list[SendResult]:
        """Send a batch; results are in the same order as `messages`."""
        ...

    def close(self) -> None:
        """Release connections and other resources."""
        ...


def check_batch(messages: Sequence[PushMessage], max_batch: int) -> None:
    """Raise ValueError when a batch is larger than the transport accepts."""
    if len(messages) > max_batch:
        raise ValueError(f"batch of {len(messages)} messages exceeds max_batch={max_batch}")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Parse a Retry-After header (delta-seconds or HTTP-date) into seconds from now."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms parse naive
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def mask_token(token: str) -> str:
    """Return a loggable form of a push token: never the whole token."""
    return f"…{token[-6:]}" if len(token) > 12 else "…"
