"""Claim, hand over, record, release: the bookkeeping every kind of delivery row shares.

Campaign deliveries (send.py) and notification deliveries (services/notify_dispatch.py)
live in tables of the same shape (id, device_id, status, reason, attempts,
next_attempt_at, claimed_at, updated_at; campaigns also keep `handed_at`); these
functions take the table and do the same to either, so both lanes have one claim,
one fenced record of FCM's answers, one time-bounded retry rule and one release of
a dead dispatcher's claims. `claim` and `write` return how many rows they decided, by
(status, reason), for the campaigns' counts (services/delivery_counts.py).

Fencing: a claim increments `attempts`, and every later write of the claimer (its
answers, its lease renewals) names that value. A row whose lease lapsed and that
another dispatcher claimed again carries a higher one, so a late answer from the
first is ignored and the row is counted once, by the outcome of its last hand-off.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from mobile_api.push import Outcome, PushMessage, PushTransport, SendResult
from mobile_api.services import Db
from models import DeliveryStatus, Device, utcnow
from models.base import UTCDateTime

from .core import Settings
from .handoff import LeaseKeeper, SendLimiter, SendPacing


def backoff_seconds(
    attempts: int, retry_after: float | None, settings: Settings, rng: random.Random
) -> float:
    """Exponential back-off with full jitter, never sooner than the server's Retry-After."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempts - 1))
    return max(rng.uniform(ceiling / 2, ceiling), retry_after or 0.0)


_rng = random.Random()  # noqa: S311 - jitter, not a secret


def retry_deadline(origin: datetime, ttl_seconds: int | None, settings: Settings) -> datetime:
    """Until when a message is retried: `origin` plus the retry window, or its TTL if shorter."""
    window = settings.retry_window_seconds
    if ttl_seconds is not None:
        window = min(window, float(ttl_seconds))
    return origin + timedelta(seconds=window)


# How many rows a write decided, by (status, reason).
Decided = Counter[tuple[str, str | None]]


def set_rows(
    session: Db, table: sa.Table, ids: list[int], *where: sa.ColumnElement[bool], **values: Any
) -> int:
    """Set the same values on the rows of `ids` (that also match `where`); how many."""
    result = session.execute(
        sa.update(table)
        .where(table.c.id.in_(ids), *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


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
) -> Decided:
    """Mark the rows `to_send` as being handed over and the others suppressed, by reason.

    `sending`: more columns to set on the rows handed over. The caller selected the
    rows in this transaction and commits it: the claim. From that commit on no other
    dispatcher takes these rows until the claim's lease lapses. Returns the rows
    suppressed, by reason.
    """
    decided: Decided = Counter()
    for why, ids in suppressed.items():
        decided[(DeliveryStatus.SUPPRESSED.value, why)] += set_rows(
            session, table, ids, status=DeliveryStatus.SUPPRESSED, reason=why, updated_at=now
        )
    if to_send:
        set_rows(
            session,
            table,
            [row.id for row in to_send],
            status=DeliveryStatus.SENDING,
            claimed_at=now,
            attempts=table.c.attempts + 1,
            updated_at=now,
            **sending,
        )
    return decided


@contextmanager
def leased(
    session: Db, table: sa.Table, to_send: Sequence[Any], lease_seconds: float
) -> Iterator[None]:
    """Keep the claim of `to_send` (as claimed: attempts + 1) alive while the block runs."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, sa.Engine) else bind.engine
    fence = {row.id: row.attempts + 1 for row in to_send}
    with LeaseKeeper(engine, table, fence, lease_seconds):
        yield


def hand_off(
    session: Db,
    table: sa.Table,
    push: PushTransport,
    rows: Sequence[Any],
    messages: Sequence[PushMessage],
    pacing: SendPacing | None,
) -> list[SendResult | None]:
    """Hand the messages over; None for those never handed over (no send slot).

    Messages of providers without a send rate go first, all at once (the router
    sends each provider's group at the same time). Then each paced provider's,
    slice by slice, each slice waiting for a slot of its provider's rate. Where
    the table keeps `handed_at`, rows are marked just before they go, so rows
    still waiting when the dispatcher dies are known never to have left.
    """
    results: list[SendResult | None] = [None] * len(messages)
    limiters = pacing.limiters if pacing is not None else {}
    # Without a send rate the claim marked the rows handed; with one, each slice is.
    mark = pacing is not None and "handed_at" in table.c
    unpaced = [i for i, message in enumerate(messages) if message.provider not in limiters]
    _send(session, table, push, rows, messages, unpaced, results, push.max_batch, None, mark)
    for provider, limiter in limiters.items():
        indexes = [i for i, message in enumerate(messages) if message.provider == provider]
        step = min(push.max_batch, limiter.slice_size)
        _send(session, table, push, rows, messages, indexes, results, step, limiter, mark)
    return results


def _send(
    session: Db,
    table: sa.Table,
    push: PushTransport,
    rows: Sequence[Any],
    messages: Sequence[PushMessage],
    indexes: list[int],
    results: list[SendResult | None],
    step: int,
    limiter: SendLimiter | None,
    mark: bool,
) -> None:
    """Send the messages at `indexes`, `step` at a time, each slice after a slot of `limiter`.

    `mark`: set `handed_at` on each slice's rows (committed) just before it goes.
    """
    for start in range(0, len(indexes), step):
        part = indexes[start : start + step]
        if limiter is not None and not limiter.acquire():
            return  # the rest stays None: not handed over, pending again at once
        if mark:
            set_rows(session, table, [rows[i].id for i in part], handed_at=utcnow())
            session.commit()
        results_part = push.send([messages[i] for i in part])
        for index, result in zip(part, results_part, strict=True):
            results[index] = result


@dataclass(slots=True)
class Outcomes:
    """What FCM's answers make of the claimed rows."""

    now: datetime
    # Sent or failed, by (status, reason, claim): alike, one UPDATE … WHERE id IN (…) each.
    settled: dict[tuple[str, str | None, int], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    updates: list[dict[str, Any]] = field(default_factory=list)  # retrying, not handed
    pruned: list[dict[str, Any]] = field(default_factory=list)  # dead tokens
    counts: dict[str, int] = field(
        default_factory=lambda: {"sent": 0, "failed": 0, "retrying": 0, "not_handed": 0}
    )


def decide(
    rows: Sequence[Any],
    results: Sequence[SendResult | None],
    settings: Settings,
    deadline: Callable[[Any], datetime],
) -> Outcomes:
    """Sort the answers: sent, failed (dead tokens to prune), or pending again.

    A retryable answer makes the row pending again after a back-off (at least the
    server's Retry-After) until its `deadline` (per row): retries are bounded by
    time, and by PUSH_MAX_ATTEMPTS only when that is set (> 0). A row never handed
    over (no send slot) is pending again at once, not counted an attempt.
    """
    now = utcnow()
    decided = Outcomes(now)
    counts = decided.counts
    # send() keeps the order of messages, so result i belongs to row i.
    for row, result in zip(rows, results, strict=True):
        attempts = row.attempts + 1
        if result is not None and result.outcome == Outcome.SENT:
            decided.settled[(DeliveryStatus.SENT, None, attempts)].append(row.id)
            counts["sent"] += 1
            continue
        update = {
            "b_id": row.id,
            "b_claim": attempts,
            "b_attempts": attempts,
            "b_next": now,
            "b_now": now,
        }
        until = deadline(row)
        if result is None:
            update.update(b_status=DeliveryStatus.PENDING, b_reason=None, b_attempts=row.attempts)
            counts["not_handed"] += 1
        elif (
            result.outcome == Outcome.RETRY
            and now < until
            and (settings.max_attempts <= 0 or attempts < settings.max_attempts)
        ):
            delay = backoff_seconds(attempts, result.retry_after, settings, _rng)
            retry_at = min(now + timedelta(seconds=delay), until)
            update.update(b_status=DeliveryStatus.PENDING, b_reason=result.error, b_next=retry_at)
            counts["retrying"] += 1
        else:
            decided.settled[(DeliveryStatus.FAILED, result.error or "unknown", attempts)].append(
                row.id
            )
            counts["failed"] += 1
            if result.outcome == Outcome.INVALID_TOKEN:
                decided.pruned.append(
                    {"b_device": row.device_id, "b_token": row.push_token, "b_now": now}
                )
            continue
        decided.updates.append(update)
    return decided


def write(session: Db, table: sa.Table, decided: Outcomes) -> Decided:
    """Write the outcomes into `table`, rows still held by this claim only; the caller commits.

    Held: status `sending` and the attempts value the claim set. A row whose lease
    lapsed meanwhile belongs to whoever took it over. Returns the rows written sent
    or failed, by (status, reason).
    """
    now = decided.now
    written: Decided = Counter()
    for (status, reason, attempts), ids in decided.settled.items():
        written[(status, reason)] += set_rows(
            session,
            table,
            ids,
            table.c.status == DeliveryStatus.SENDING,
            table.c.attempts == attempts,
            status=status,
            reason=reason,
            next_attempt_at=now,
            updated_at=now,
            claimed_at=None,
        )
    if decided.updates:
        session.execute(
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("b_id"),
                table.c.status == DeliveryStatus.SENDING,
                table.c.attempts == sa.bindparam("b_claim"),
            )
            .values(
                status=sa.bindparam("b_status"),
                reason=sa.bindparam("b_reason"),
                attempts=sa.bindparam("b_attempts"),
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
    return written


def lapsed(table: sa.Table, settings: Settings, now: datetime) -> list[sa.ColumnElement[bool]]:
    """Where a dead dispatcher's claim is: rows `sending` whose lease has lapsed."""
    return [
        table.c.status == DeliveryStatus.SENDING,
        table.c.claimed_at < now - timedelta(seconds=settings.claim_lease_seconds),
    ]


def any_lapsed(session: Db, table: sa.Table, where: Sequence[sa.ColumnElement[bool]]) -> bool:
    """Whether a row matches; reads only, so an idle poll takes no SQLite write lock."""
    found = session.scalar(sa.select(sa.select(table.c.id).where(*where).exists()))
    if not found:
        session.commit()
    return bool(found)


def release(
    session: Db,
    table: sa.Table,
    where: Sequence[sa.ColumnElement[bool]],
    now: datetime,
    *returning: sa.ColumnElement[Any],
) -> Sequence[sa.Row[Any]]:
    """Give the rows matching `where` back to be sent, due now; the caller commits.

    Pending again, the next claim reads consent and deliverability again, and the
    message it makes carries the same collapse identity as the first hand-off.
    """
    return session.execute(
        sa.update(table)
        .where(*where)
        .values(status=DeliveryStatus.PENDING, next_attempt_at=now, claimed_at=None, updated_at=now)
        .returning(table.c.id, *returning)
        .execution_options(synchronize_session=False)
    ).all()
