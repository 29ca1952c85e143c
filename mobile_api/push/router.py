"""The router: one PushTransport face over the transports of every provider."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from .base import MAX_BATCH, Outcome, PushMessage, PushTransport, Reason, SendResult, check_batch


class Router:
    """Hands each message to the transport of its provider; results keep the input order.

    The groups of a batch go out at the same time, each transport's from a thread
    of its own (firebase-admin's send blocks; APNs' waits on its event loop), so a
    batch mixing providers takes as long as its slowest group, not their sum, and a
    slow provider does not hold back another's hand-off.

    Messages whose provider has no transport fail with `provider_not_configured`
    (the dispatcher suppresses such devices before hand-off; this covers a
    configuration that changed in between).
    """

    name = "router"
    max_batch = MAX_BATCH

    def __init__(self, transports: Mapping[str, PushTransport]) -> None:
        self.transports: dict[str, PushTransport] = dict(transports)
        self._pool: ThreadPoolExecutor | None = None

    def send(self, messages: Sequence[PushMessage]) -> list[SendResult]:
        """Send a batch, each provider's group through its transport, the groups concurrently."""
        check_batch(messages, self.max_batch)
        groups: dict[str, list[int]] = defaultdict(list)
        for index, message in enumerate(messages):
            groups[message.provider].append(index)
        results: list[SendResult | None] = [None] * len(messages)
        missing = SendResult(Outcome.FAILED, Reason.PROVIDER_NOT_CONFIGURED)
        sendable: list[tuple[PushTransport, list[int]]] = []
        for provider, indexes in groups.items():
            push = self.transports.get(provider)
            if push is None:
                for index in indexes:
                    results[index] = missing
            else:
                sendable.append((push, indexes))

        def send_group(push: PushTransport, indexes: list[int]) -> None:
            for start in range(0, len(indexes), push.max_batch):
                part = indexes[start : start + push.max_batch]
                sent = push.send([messages[i] for i in part])
                for index, result in zip(part, sent, strict=True):
                    results[index] = result

        if len(sendable) == 1:
            send_group(*sendable[0])  # the common case: no thread to wait for
        elif sendable:
            futures = [self._executor().submit(send_group, *group) for group in sendable]
            wait(futures)  # every group ends before the batch does, even if one raised
            for future in futures:
                future.result()  # re-raises a transport's exception, as sending in turn did
        return [result for result in results if result is not None]

    def _executor(self) -> ThreadPoolExecutor:
        # Built on first use, in the process that sends: a pool's threads do not
        # survive a fork, and the router is built once per process anyway.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=len(self.transports), thread_name_prefix="push-router"
            )
        return self._pool

    def close(self) -> None:
        """Close every transport, and the threads that sent the groups."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for push in self.transports.values():
            push.close()

    def __repr__(self) -> str:
        return f"Router({self.transports!r})"
