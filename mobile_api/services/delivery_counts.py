"""Each campaign's delivery counts by status and reason, kept as its deliveries change.

Every write that inserts a campaign's delivery rows, decides them or deletes them
passes what it changed to `add`, in its own transaction, so the table
`campaign_delivery_counts` always equals a GROUP BY over the rows, and a campaign's
counts are read from a handful of rows while it sends a million messages. The
undecided states (pending, sending) are one count, `pending` with no reason: claims,
releases and retries move rows between them and change no count.

Several dispatchers add at once. Each `add` is one INSERT … ON CONFLICT DO UPDATE
SET n = n + excluded.n (nothing read first), its rows in a fixed order, and after it
its transaction waits for no lock that a transaction holding counter rows could
hold: it commits, or writes the campaign row it locked before (enumerating a batch)
and appends to the audit trail (cancelling), whose lock no `add` is made under. Two
transactions take counter rows in the same order and wait for nothing else while
they hold them, so they cannot deadlock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import sqlalchemy as sa

from mobile_api.services import Db, dialect_insert
from models import DeliveryCount, DeliveryStatus

Key = tuple[str, str, str]  # campaign id, status, reason ('' for none)


def key(campaign_id: str, status: str, reason: str | None) -> Key:
    """The count a delivery row in this state belongs to."""
    if status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING):
        return (campaign_id, DeliveryStatus.PENDING.value, "")
    return (campaign_id, str(status), reason or "")


def decided(campaign_id: str, outcomes: Mapping[tuple[str, str | None], int]) -> Counter[Key]:
    """Undecided rows that became (status, reason): so many, by outcome."""
    changes: Counter[Key] = Counter()
    for (status, reason), n in outcomes.items():
        changes[key(campaign_id, status, reason)] += n
        changes[key(campaign_id, DeliveryStatus.PENDING, None)] -= n
    return changes


def forget(session: Db, rows: Iterable[tuple[str, str, str | None]]) -> None:
    """Take rows (campaign id, status, reason) deleted in this transaction out of the counts."""
    gone = Counter(key(*row) for row in rows)
    add(session, {k: -n for k, n in gone.items()})


def add(session: Db, changes: Mapping[Key, int]) -> None:
    """Add the changes to the counts, in the caller's transaction (late in it: see above)."""
    rows = [
        {"campaign_id": campaign_id, "status": status, "reason": reason, "n": n}
        for (campaign_id, status, reason), n in sorted(changes.items())
        if n
    ]
    if not rows:
        return
    insert = dialect_insert(session)(DeliveryCount).values(rows)
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["campaign_id", "status", "reason"],
            set_={"n": DeliveryCount.n + insert.excluded.n},
        )
    )


def of(session: Db, campaign_id: str) -> list[tuple[str, str, int]]:
    """(status, reason or '', how many) of the campaign's deliveries, counts not 0."""
    rows = session.execute(
        sa.select(DeliveryCount.status, DeliveryCount.reason, DeliveryCount.n).where(
            DeliveryCount.campaign_id == campaign_id, DeliveryCount.n != 0
        )
    )
    return [(status, reason, n) for status, reason, n in rows]
