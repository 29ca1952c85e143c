"""Erasure driven by the data inventory (models/inventory.py), not by a list kept here.

For every personal column the inventory declares, erasing devices does what its entry says:

- ``WITH_DEVICE`` on a column referencing ``devices.id``: the device's rows are deleted;
- ``UNLINKED`` on a column referencing ``devices.id``: the column is set to NULL;
- ``KEYED_HASH``: the column's registered scrubber replaces the erased ids by keyed hashes.

then the device rows themselves go. Foreign-key cascades would delete most children anyway;
doing it from the inventory means a table added with an entry is erased with no code here, and
a ``KEYED_HASH`` entry without a scrubber stops the erasure instead of leaving data behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import sqlalchemy as sa

from mobile_api.services import Db
from models import Base, Device
from models.inventory import Erasure, Personal, personal

# scrub(session, device_ids, account_ids, hash_id): replace those ids in the column.
Scrubber = Callable[[Db, Sequence[str], Sequence[str], Callable[[str], str]], None]
S = TypeVar("S", bound=Scrubber)

_SCRUBBERS: dict[tuple[str, str], Scrubber] = {}


def scrubber(table: str, column: str) -> Callable[[S], S]:
    """Register how a KEYED_HASH column has erased ids replaced by their keyed hashes."""

    def decorator(scrub: S) -> S:
        _SCRUBBERS[(table, column)] = scrub
        return scrub

    return decorator


def _links_to_device(column: sa.Column[object]) -> bool:
    return any(fk.column.table.name == Device.__tablename__ for fk in column.foreign_keys)


def _apply(
    session: Db,
    table: sa.Table,
    column: str,
    entry: Personal,
    device_ids: Sequence[str],
    account_ids: Sequence[str],
    hash_id: Callable[[str], str],
) -> None:
    link = table.c[column]
    if entry.erasure is Erasure.KEYED_HASH:
        scrub = _SCRUBBERS.get((table.name, column))
        if scrub is None:
            raise LookupError(f"no scrubber erases {table.name}.{column}")
        scrub(session, device_ids, account_ids, hash_id)
    elif entry.erasure is Erasure.WITH_DEVICE and _links_to_device(link):
        session.execute(sa.delete(table).where(link.in_(device_ids)))
    elif entry.erasure is Erasure.UNLINKED and _links_to_device(link):
        session.execute(sa.update(table).where(link.in_(device_ids)).values({column: None}))


def erase_devices(
    session: Db,
    device_ids: Sequence[str],
    hash_id: Callable[[str], str],
    account_ids: Sequence[str] = (),
) -> int:
    """Erase these devices (and ids of these accounts) as the inventory says; devices erased.

    Not committed: the caller commits with its audit record. `hash_id` is the keyed hash that
    replaces an erased id where a row outlives it.
    """
    devices = cast(sa.Table, Device.__table__)
    for table in reversed(Base.metadata.sorted_tables):  # children before their parents
        if table is devices:
            continue
        for column, entry in personal(table.name).items():
            if device_ids or entry.erasure is Erasure.KEYED_HASH:
                _apply(session, table, column, entry, device_ids, account_ids, hash_id)
    if not device_ids:
        return 0
    result = session.execute(sa.delete(devices).where(devices.c.id.in_(device_ids)))
    return int(result.rowcount)  # type: ignore[attr-defined]
