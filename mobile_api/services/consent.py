"""The consent ledger's one writer: every consent record is appended through `record`.

Preferences, OS permissions, category choices, support's disable/enable and the
system's account termination all land here, so every row has the same shape and
the ledger stays append-only (models/device.py refuses updates).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import cast

import sqlalchemy as sa

from mobile_api.services import Db
from models import ConsentRecord, utcnow

CATEGORY_PREFIX = "category:"

_INSERT = sa.insert(cast(sa.Table, ConsentRecord.__table__))


def category_purpose(key: str) -> str:
    """The ledger purpose of a notification category's preference."""
    return CATEGORY_PREFIX + key


def record(
    session: Db,
    device_id: str,
    purpose: str,
    granted: bool,
    source: str,
    policy_version: str | None = None,
    *,
    at: datetime | None = None,
) -> None:
    """Append one consent record to the caller's transaction (the caller commits)."""
    record_many(session, [device_id], purpose, granted, source, policy_version, at=at)


def record_many(
    session: Db,
    device_ids: Iterable[str],
    purpose: str,
    granted: bool,
    source: str,
    policy_version: str | None = None,
    *,
    at: datetime | None = None,
) -> None:
    """Append the same change for several devices in one INSERT (the caller commits)."""
    # A plain INSERT rather than ORM objects: the ledger is only ever appended to,
    # and the unit of work's flush cost a tenth of a registration.
    when = at or utcnow()
    rows = [
        {
            "device_id": device_id,
            "purpose": purpose,
            "granted": granted,
            "source": source,
            "policy_version": policy_version,
            "recorded_at": when,
        }
        for device_id in device_ids
    ]
    if rows:
        session.execute(_INSERT, rows)
