"""Declarative base, naming convention and column types shared by every model."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Dialect, MetaData, String
from sqlalchemy.orm import DeclarativeBase, registry
from sqlalchemy.types import TypeDecorator

# Alembic names constraints from this convention, so migrations are reviewable
# and a later migration can drop a constraint by a predictable name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# How far the service's clock runs ahead of the system's: zero, except in tests
# and benchmarks that travel in time (scheduled campaigns, quiet hours, caps).
_clock_offset = timedelta(0)


# Tests only: a file holding the offset, read at every utcnow(), so the worker
# processes a test starts (tests/clocked_celery.py) travel with it. Nothing in
# the service sets it: no setting or variable turns it on in production.
_clock_file: Path | None = None


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    if _clock_file is not None:
        return datetime.now(UTC) + _offset_in(_clock_file)
    return datetime.now(UTC) + _clock_offset


def travel_to(moment: datetime | None) -> None:
    """Make utcnow() read `moment` now and run on from there; None returns to real time."""
    global _clock_offset
    _clock_offset = timedelta(0) if moment is None else moment - datetime.now(UTC)


def share_clock(path: Path) -> None:
    """Tests: write this process's clock offset to `path` for the processes following it."""
    staged = path.with_name(f"{path.name}.new")
    staged.write_text(repr(_clock_offset.total_seconds()))
    staged.replace(path)  # whole, never half-written


def follow_clock(path: Path | None) -> None:
    """Tests: from now on read the clock offset from `path` (None: this process's own)."""
    global _clock_file
    _clock_file = path


def _offset_in(path: Path) -> timedelta:
    try:
        return timedelta(seconds=float(path.read_text()))
    except FileNotFoundError:
        return timedelta(0)


def new_id() -> str:
    """Return a new opaque, time-ordered, unguessable id (26 chars, ULID layout)."""
    # 48 bits of milliseconds then 80 random bits: ids sort by creation time,
    # which keeps keyset pagination and B-tree inserts cheap.
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        """Normalise to UTC; SQLite has no zone support, so store naive UTC there."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return aware UTC datetimes whatever the backend."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Base class of every model."""

    registry = registry(
        metadata=MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={datetime: UTCDateTime(), str: String()},
    )
