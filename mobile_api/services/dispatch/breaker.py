"""The circuit breaker of a campaign: while FCM fails, the campaign backs off as a whole.

Without it every due delivery of a campaign is tried, fails and is retried on its
own schedule, and an outage meets hundreds of failing requests a second. With it, a
chunk of which at least half met an outage error (unavailable, internal, quota,
transport) opens the breaker: the campaign claims nothing until `breaker_until`
(doubling from PUSH_RETRY_BASE_SECONDS up to PUSH_BREAKER_MAX_SECONDS, never sooner
than FCM's Retry-After), then a single probe message. A probe that gets through
closes it and full chunks resume; one that fails opens it again, for longer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa

from mobile_api.push import Outcome, SendResult
from mobile_api.services import Db
from models import Campaign, utcnow

from .core import Settings, log

# What FCM answers while it is down or throttling the project, as opposed to an
# answer about one message.
OUTAGE_ERRORS = frozenset({"unavailable", "internal", "quota_exceeded", "transport_error"})

_rng = random.Random()  # noqa: S311 - jitter, not a secret


def wait_seconds(trips: int, retry_after: float, settings: Settings) -> float:
    """How long the breaker stays open after its `trips`-th trip in a row (jittered)."""
    ceiling = min(settings.breaker_max_seconds, settings.retry_base_seconds * 2 ** (trips - 1))
    return max(_rng.uniform(ceiling / 2, ceiling), retry_after)


def update(
    session: Db,
    campaign_id: str,
    trips_before: int,
    results: Sequence[SendResult | None],
    settings: Settings,
) -> None:
    """Open the breaker after a failing hand-off, close it after one that got through.

    Its own short transaction, after the record's: a recorder holds the campaign
    shared, and two of them upgrading to a write in the same transaction would
    deadlock on PostgreSQL.
    """
    handed = [result for result in results if result is not None]
    if not handed:
        return
    failing = [r for r in handed if r.outcome == Outcome.RETRY and r.error in OUTAGE_ERRORS]
    now = utcnow()
    if len(failing) * 2 >= len(handed):
        # Only a closed or half-open breaker trips: chunks handed over before it
        # opened must not lengthen the wait again.
        trips = session.scalar(
            sa.update(Campaign)
            .where(
                Campaign.id == campaign_id,
                sa.or_(Campaign.breaker_until.is_(None), Campaign.breaker_until <= now),
            )
            .values(breaker_trips=Campaign.breaker_trips + 1)
            .returning(Campaign.breaker_trips)
            .execution_options(synchronize_session=False)
        )
        if trips is not None:
            retry_after = max((r.retry_after or 0.0) for r in failing)
            wait = wait_seconds(trips, retry_after, settings)
            session.execute(
                sa.update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(breaker_until=now + timedelta(seconds=wait))
                .execution_options(synchronize_session=False)
            )
            log.warning(
                "campaign %s: FCM failing (%s of %s: %s); pausing it %.1f s",
                campaign_id,
                len(failing),
                len(handed),
                failing[0].error,
                wait,
            )
        session.commit()
    elif trips_before:
        session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(breaker_trips=0, breaker_until=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        log.info("campaign %s: FCM answers again; resuming", campaign_id)
