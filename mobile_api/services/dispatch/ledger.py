"""Claim, hand over, record: the bookkeeping every kind of delivery row shares.

Campaign deliveries (send.py) and notification deliveries (services/notify_dispatch.py)
live in tables of the same shape (id, device_id, status, reason, attempts,
next_attempt_at, claimed_at, updated_at); these functions take the table and do the
same to either, so there is one claim and one record of FCM's answers.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from mobile_api.push import Outcome, PushMessage, PushTransport, SendResult
from mobile_api.services import Db
from models import DeliveryStatus, Device
from models.base import UTCDateTime

from .core import Settings


def backoff_seconds(
    attempts: int, retry_after: float | None, settings: Settings, rng: random.Random
) -> float:
    """Exponential back-off with full jitter, never sooner than the server's Retry-After."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempts - 1))
    return max(rng.uniform(ceiling / 2, ceiling), retry_after or 0.0)


_rng = random.Random()  # noqa: S311 - jitter, not a secret


def _set(session: Db, table: sa.Table, ids: list[int], **values: Any) -> None:
    session.execute(sa.update(table).where(table.c.id.in_(ids)).values(**values))


def refused(
    rows: Sequence[Any], also: Mapping[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """Ids of the selected rows that carry a `reason` (why they may not be sent), by reason.

    `also`: more ids by reason (what the dispatcher's own gates held back), merged in.
    """
    by_reason: dict[str, list[int]] = defaultdict(list)
    for why, ids in (also or {}).items():
        by_reason[why] += ids
    for row in rows:
        if row.reason is not None:
            by_reason[row.reason].append(row.id)
    return dict(by_reason)


def claim(
    session: Db,
    table: sa.Table,
    to_send: Sequence[Any],
    suppressed: Mapping[str, list[int]],
    now: datetime,
    **sending: Any,
) -> None:
    """Mark the rows `to_send` as being handed over and the others suppressed, by reason.

    `sending`: more columns to set on the rows handed over. The caller selected the
    rows in this transaction and commits it: the claim. From that commit on no other
    dispatcher takes these rows.
    """
    for why, ids in suppressed.items():
        _set(session, table, ids, status=DeliveryStatus.SUPPRESSED, reason=why, updated_at=now)
    if to_send:
        _set(
            session,
            table,
            [row.id for row in to_send],
            status=DeliveryStatus.SENDING,
            claimed_at=now,
            attempts=table.c.attempts + 1,
            updated_at=now,
            **sending,
        )


def hand_over(push: PushTransport, messages: Sequence[PushMessage]) -> list[SendResult]:
    """Send in batches the transport accepts; one result per message, in order."""
    results: list[SendResult] = []
    for start in range(0, len(messages), push.max_batch):
        results += push.send(messages[start : start + push.max_batch])
    return results


@dataclass(slots=True)
class Outcomes:
    """What FCM's answers make of the claimed rows."""

    now: datetime
    sent: list[int] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # failed or retrying
    pruned: list[dict[str, Any]] = field(default_factory=list)  # dead tokens
    failed: int = 0
    retrying: int = 0


def outcomes(
    rows: Sequence[Any], results: Sequence[SendResult], settings: Settings, now: datetime
) -> Outcomes:
    """Sort the answers: sent, failed (dead tokens to prune), or pending again after a back-off."""
    decided = Outcomes(now)
    # send() keeps the order of messages, so result i belongs to row i.
    for row, result in zip(rows, results, strict=True):
        attempts = row.attempts + 1
        if result.outcome == Outcome.SENT:
            decided.sent.append(row.id)  # all alike: one UPDATE … WHERE id IN (…)
            continue
        update = {"b_id": row.id, "b_reason": result.error, "b_next": now, "b_now": now}
        if result.outcome == Outcome.RETRY and attempts < settings.max_attempts:
            delay = backoff_seconds(attempts, result.retry_after, settings, _rng)
            update.update(b_status=DeliveryStatus.PENDING, b_next=now + timedelta(seconds=delay))
            decided.retrying += 1
        else:
            update.update(b_status=DeliveryStatus.FAILED, b_reason=result.error or "unknown")
            decided.failed += 1
            if result.outcome == Outcome.INVALID_TOKEN:
                decided.pruned.append(
                    {"b_device": row.device_id, "b_token": row.push_token, "b_now": now}
                )
        decided.updates.append(update)
    return decided


def write(session: Db, table: sa.Table, decided: Outcomes) -> None:
    """Write the outcomes into `table` (rows still `sending` only); the caller commits."""
    now = decided.now
    if decided.sent:
        session.execute(
            sa.update(table)
            .where(table.c.id.in_(decided.sent), table.c.status == DeliveryStatus.SENDING)
            .values(
                status=DeliveryStatus.SENT,
                reason=None,
                next_attempt_at=now,
                updated_at=now,
                claimed_at=None,
            )
        )
    if decided.updates:
        session.execute(
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("b_id"),
                table.c.status == DeliveryStatus.SENDING,
            )
            .values(
                status=sa.bindparam("b_status"),
                reason=sa.bindparam("b_reason"),
                next_attempt_at=sa.bindparam("b_next", type_=UTCDateTime()),
                updated_at=sa.bindparam("b_now", type_=UTCDateTime()),
                claimed_at=None,
            ),
            decided.updates,
        )
    if decided.pruned:
        # Only the token FCM refused: a device that has since checked in with a
        # new one keeps it.
        devices = cast(sa.Table, Device.__table__)
        session.execute(
            sa.update(devices)
            .where(
                devices.c.id == sa.bindparam("b_device"),
                devices.c.push_token == sa.bindparam("b_token"),
            )
            .values(push_token_invalid_at=sa.bindparam("b_now", type_=UTCDateTime())),
            decided.pruned,
        )
