"""Push transports: FCM through firebase-admin, or the log when FCM is not configured."""

from __future__ import annotations

from .base import (
    INVALID_TOKEN_ERRORS,
    MAX_BATCH,
    Outcome,
    PushMessage,
    PushTransport,
    SendResult,
    mask_token,
    parse_retry_after,
)
from .fcm import FcmSetupError, FcmTransport
from .log import LogTransport

__all__ = [
    "INVALID_TOKEN_ERRORS",
    "MAX_BATCH",
    "FcmSetupError",
    "FcmTransport",
    "LogTransport",
    "Outcome",
    "PushMessage",
    "PushTransport",
    "SendResult",
    "make_transport",
    "mask_token",
    "parse_retry_after",
]


def make_transport(
    credentials_path: str | None,
    project_id: str | None,
    endpoint: str | None,
    timeout: float = 10.0,
) -> PushTransport:
    """Build the FCM transport when credentials are given, else the log transport."""
    if credentials_path:
        return FcmTransport(credentials_path, project_id, endpoint, timeout)
    return LogTransport()
