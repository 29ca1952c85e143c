"""The log transport: records what would be pushed when FCM is not configured."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Sequence

from .base import MAX_BATCH, Outcome, PushMessage, SendResult, check_batch, mask_token

logger = logging.getLogger("mobile_api.push")


class LogTransport:
    """Logs each message at INFO (token masked) and reports it as sent."""

    name = "log"
    max_batch = MAX_BATCH

    def __init__(self, *, announce: bool = True) -> None:
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = itertools.count(1)
        if announce:
            self.announce()

    def announce(self) -> None:
        """Log a WARNING that FCM is not configured and pushes only go to the log."""
        logger.warning(
            "FCM is not configured (FCM_CREDENTIALS unset): pushes go to the log transport"
            " and reach no device"
        )

    def send(self, messages: Sequence[PushMessage]) -> list[SendResult]:
        """Log every message and return SENT with a synthetic message id for each."""
        check_batch(messages, self.max_batch)
        results = []
        for message in messages:
            message_id = f"log/{self._prefix}/{next(self._counter)}"
            logger.info(
                "push %s to %s: title=%r body=%r data=%r ttl=%s collapse_key=%s priority=%s",
                message_id,
                mask_token(message.token),
                message.title,
                message.body,
                dict(message.data),
                message.ttl_seconds,
                message.collapse_key,
                message.priority,
            )
            results.append(SendResult(Outcome.SENT, message_id=message_id))
        return results

    def close(self) -> None:
        """Nothing to release."""

    def __str__(self) -> str:
        return self.name
