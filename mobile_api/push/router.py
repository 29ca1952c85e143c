"""The router: one PushTransport face over the transports of every provider."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from .base import MAX_BATCH, Outcome, PushMessage, PushTransport, Reason, SendResult, check_batch


class Router:
    """Hands each message to the transport of its provider; results keep the input order.

    Messages whose provider has no transport fail with `provider_not_configured`
    (the dispatcher suppresses such devices before hand-off; this covers a
    configuration that changed in between).
    """

    name = "router"
    max_batch = MAX_BATCH

    def __init__(self, transports: Mapping[str, PushTransport]) -> None:
        self.transports: dict[str, PushTransport] = dict(transports)

    def send(self, messages: Sequence[PushMessage]) -> list[SendResult]:
        """Send a batch, each group of one provider through its transport, in order."""
        check_batch(messages, self.max_batch)
        groups: dict[str, list[int]] = defaultdict(list)
        for index, message in enumerate(messages):
            groups[message.provider].append(index)
        results: list[SendResult | None] = [None] * len(messages)
        missing = SendResult(Outcome.FAILED, Reason.PROVIDER_NOT_CONFIGURED)
        for provider, indexes in groups.items():
            push = self.transports.get(provider)
            if push is None:
                for index in indexes:
                    results[index] = missing
                continue
            for start in range(0, len(indexes), push.max_batch):
                part = indexes[start : start + push.max_batch]
                sent = push.send([messages[i] for i in part])
                for index, result in zip(part, sent, strict=True):
                    results[index] = result
        return [result for result in results if result is not None]

    def close(self) -> None:
        """Close every transport."""
        for push in self.transports.values():
            push.close()

    def __repr__(self) -> str:
        return f"Router({self.transports!r})"
