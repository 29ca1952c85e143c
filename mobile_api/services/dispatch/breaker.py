"""The circuit breaker of each push provider: while one fails, its deliveries wait, others go on.

Without it every due delivery is tried, fails and is retried on its own schedule,
and an outage meets hundreds of failing requests a second. With it, a hand-off of
which at least half of one provider's messages met an outage error (unavailable,
internal, quota, transport) opens that provider's breaker: every campaign's and
notification's deliveries to its devices are held, pending, until `open_until`
(doubling from PUSH_RETRY_BASE_SECONDS up to PUSH_BREAKER_MAX_SECONDS, never sooner
than the provider's Retry-After), then a single probe message goes. A probe that
gets through closes it and the held deliveries are due at once; one that fails
opens it again, for longer, and they wait for that.

Why per provider, not per campaign nor per (campaign, provider): an outage is the
provider's (Apple's host down, FCM throttling the project), whatever the campaign.
Per campaign, an APNs outage held the campaign's FCM devices too, each campaign
had to learn of it with a failing chunk of its own, and notifications had none.
Per (campaign, provider) would fix the first only. One row per provider is what
every lane reads and writes: one campaign's failing chunk holds the others and the
notification lane at once, and one probe tells them all when it is over. What is
about one message (a dead token, a payload too large) never counts.

A held delivery is deferred, never dropped or failed: it stays pending with reason
`breaker_open` and its next attempt at the breaker's `open_until`; it costs no
attempt and no retry time. Each trip re-times the held rows to the new
`open_until`; the close makes them due now.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from mobile_api.push import Outcome, SendResult
from mobile_api.services import Db, dialect_insert
from models import Delivery, DeliveryStatus, Device, NotificationDelivery, PushBreaker, utcnow

from .core import Settings, log

# What a provider answers while it is down or throttling us, as opposed to an
# answer about one message.
OUTAGE_ERRORS = frozenset({"unavailable", "internal", "quota_exceeded", "transport_error"})
HELD = "breaker_open"  # the reason on a delivery held while its provider's breaker is open

# The tables of delivery rows a breaker holds (each lane's).
_TABLES = (cast(sa.Table, Delivery.__table__), cast(sa.Table, NotificationDelivery.__table__))

_rng = random.Random()  # noqa: S311 - jitter, not a secret


@dataclass(frozen=True, slots=True)
class Gate:
    """What `admit` decided for one hand-off: the providers whose probe it carries."""

    probing: frozenset[str] = field(default_factory=frozenset)


def wait_seconds(trips: int, retry_after: float, settings: Settings) -> float:
    """How long the breaker stays open after its `trips`-th trip in a row (jittered)."""
    ceiling = min(settings.breaker_max_seconds, settings.retry_base_seconds * 2 ** (trips - 1))
    return max(_rng.uniform(ceiling / 2, ceiling), retry_after)


def admit(
    session: Db, table: sa.Table, rows: Sequence[Any], now: datetime, settings: Settings
) -> tuple[list[Any], Gate]:
    """The rows that may be handed over now; the others are held (deferred) in `table`.

    In the claim's transaction. A provider whose breaker is open holds all its rows;
    a half-open one lets one row through as its probe, to this hand-off only (the
    probe's lease keeps the breaker open for the others meanwhile), and holds the
    rest. `rows` carry `id` and `push_provider`.
    """
    providers = sorted({row.push_provider for row in rows})
    if not providers:
        return list(rows), Gate()
    states = {
        breaker.provider: breaker
        for breaker in session.scalars(
            sa.select(PushBreaker).where(PushBreaker.provider.in_(providers), PushBreaker.trips > 0)
        )
    }
    if not states:
        return list(rows), Gate()
    probing: set[str] = set()
    until: dict[str, datetime] = {}
    for provider, breaker in states.items():
        if breaker.open_until is not None and breaker.open_until > now:
            until[provider] = breaker.open_until
            continue
        # Half-open: take the probe, unless another hand-off just did.
        probe_lease = now + timedelta(seconds=settings.claim_lease_seconds)
        taken = session.scalar(
            sa.update(PushBreaker)
            .where(
                PushBreaker.provider == provider,
                PushBreaker.trips > 0,
                sa.or_(PushBreaker.open_until.is_(None), PushBreaker.open_until <= now),
            )
            .values(open_until=probe_lease)
            .returning(PushBreaker.provider)
            .execution_options(synchronize_session=False)
        )
        if taken is not None:
            probing.add(provider)
            until[provider] = probe_lease
        else:
            # Another hand-off took the probe, or tripped the breaker again, since the
            # read above: hold the rows until what it set (read committed sees it).
            until[provider] = (
                session.scalar(
                    sa.select(PushBreaker.open_until).where(PushBreaker.provider == provider)
                )
                or probe_lease
            )
    admitted: list[Any] = []
    held: dict[datetime, list[int]] = defaultdict(list)
    for row in rows:
        provider = row.push_provider
        if provider not in until:
            admitted.append(row)
        elif provider in probing and not any(r.push_provider == provider for r in admitted):
            admitted.append(row)  # the probe
        else:
            held[until[provider]].append(row.id)
    for when, ids in held.items():
        session.execute(
            sa.update(table)
            .where(table.c.id.in_(ids))
            .values(next_attempt_at=when, reason=HELD, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    return admitted, Gate(frozenset(probing))


def update(
    session: Db,
    gate: Gate,
    rows: Sequence[Any],
    results: Sequence[SendResult | None],
    settings: Settings,
) -> None:
    """Open a provider's breaker after a failing hand-off, close it after a probe that got through.

    Its own short transactions, after the record's. Only a closed or half-open
    breaker trips (or the one this hand-off probed): hand-offs that went out before
    it opened must not lengthen the wait again.

    The breaker row is committed before the held deliveries are re-timed, in a
    transaction of their own that skips rows another dispatcher holds: a claim locks
    its delivery rows first and the breaker row second (`admit`), so a trip that
    held the breaker row while waiting for those rows would deadlock with it. A row
    skipped so is in a claim, which hands it over or holds it by the breaker as it
    reads it; one held to an earlier time is held again by the claim that finds it.
    """
    by_provider: dict[str, list[SendResult]] = defaultdict(list)
    for row, result in zip(rows, results, strict=True):
        if result is not None:
            by_provider[row.push_provider].append(result)
    retime: dict[str, datetime] = {}
    changed = False
    for provider, handed in sorted(by_provider.items()):
        failing = [r for r in handed if r.outcome == Outcome.RETRY and r.error in OUTAGE_ERRORS]
        if len(failing) * 2 >= len(handed):
            changed = True
            until = _trip(session, provider, provider in gate.probing, failing, settings)
            if until is not None:
                retime[provider] = until
        elif provider in gate.probing:
            changed = True
            retime[provider] = _close(session, provider)
    if not changed:
        return
    session.commit()
    now = utcnow()
    for provider, when in retime.items():
        _retime_held(session, provider, when, now)
        session.commit()


def _trip(
    session: Db, provider: str, probed: bool, failing: list[SendResult], settings: Settings
) -> datetime | None:
    """Open (or reopen) the breaker: when its held deliveries are due now, or None if
    it was open already."""
    now = utcnow()
    session.execute(
        dialect_insert(session)(PushBreaker)
        .values(provider=provider, trips=0)
        .on_conflict_do_nothing(index_elements=[PushBreaker.provider])
    )
    allowed = sa.or_(PushBreaker.open_until.is_(None), PushBreaker.open_until <= now)
    trips = session.scalar(
        sa.update(PushBreaker)
        .where(PushBreaker.provider == provider, sa.true() if probed else allowed)
        .values(trips=PushBreaker.trips + 1)
        .returning(PushBreaker.trips)
        .execution_options(synchronize_session=False)
    )
    if trips is None:
        return None  # already open: the insert (if any) is all there is to commit
    retry_after = max((r.retry_after or 0.0) for r in failing)
    wait = wait_seconds(trips, retry_after, settings)
    until = now + timedelta(seconds=wait)
    session.execute(
        sa.update(PushBreaker)
        .where(PushBreaker.provider == provider)
        .values(open_until=until)
        .execution_options(synchronize_session=False)
    )
    log.warning(
        "push provider %s failing (%s: %s); holding its deliveries %.1f s",
        provider,
        len(failing),
        failing[0].error,
        wait,
    )
    return until


def _close(session: Db, provider: str) -> datetime:
    """Close the breaker: when its held deliveries are due (now)."""
    now = utcnow()
    session.execute(
        sa.update(PushBreaker)
        .where(PushBreaker.provider == provider)
        .values(trips=0, open_until=None)
        .execution_options(synchronize_session=False)
    )
    log.info("push provider %s answers again; its held deliveries resume", provider)
    return now


def _retime_held(session: Db, provider: str, when: datetime, now: datetime) -> None:
    """Make every delivery held for `provider`, in every lane, due at `when`; rows
    another transaction holds locked are left to it (SKIP LOCKED: PostgreSQL only,
    SQLite has no row locks)."""
    devices = sa.select(Device.id).where(Device.push_provider == provider)
    for table in _TABLES:
        held = (
            sa.select(table.c.id)
            .where(
                table.c.status == DeliveryStatus.PENDING,
                table.c.reason == HELD,
                table.c.device_id.in_(devices),
            )
            .with_for_update(skip_locked=True)
        )
        session.execute(
            sa.update(table)
            .where(table.c.id.in_(held))
            .values(next_attempt_at=when, updated_at=now)
            .execution_options(synchronize_session=False)
        )
