"""The audit trail: append-only staff actions, each hash-chained to the one before.

Events hold no personal data: devices and accounts are named by `subject()`, a
keyed hash of their id, never by the id itself, so erasure leaves the trail intact.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from mobile_api.services import Db, is_postgresql
from mobile_api.services.caller import Caller
from mobile_api.services.secrets import keyed_hash
from models import AuditEvent, utcnow

GENESIS = "0" * 64
# Any constant shared by every writer: the transaction-scoped PostgreSQL lock
# that serialises appends, so two writers never chain onto the same parent.
_CHAIN_LOCK = 0x6D6F62696C65A0D1


@dataclass(frozen=True, slots=True)
class BrokenLink:
    """The first event whose hash or link to its predecessor does not hold."""

    event_id: int
    reason: str


def subject(secret_key: str, identifier: str) -> str:
    """How the trail names a device or account: HMAC of its id under SECRET_KEY."""
    return keyed_hash(secret_key, identifier)


def _canonical_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def compute_hash(event: Any, prev_hash: str) -> str:
    """SHA-256 over the previous hash and the canonical JSON of the event's fields."""
    fields = {name: getattr(event, name) for name in _HASHED}
    return _digest(fields, prev_hash)


_HASHED = ("id", "recorded_at", "actor", "action", "target", "request_id", "details")


def _digest(fields: Mapping[str, Any], prev_hash: str) -> str:
    canonical = json.dumps(
        {**fields, "recorded_at": _canonical_time(fields["recorded_at"])},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def record(
    session: Db,
    caller: Caller,
    *,
    action: str,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event by `caller` to the session's transaction (the service commits)."""
    if is_postgresql(session):
        _lock_chain(session)
    # Insert first, then link: on SQLite the INSERT takes the database's single
    # write lock, so no other writer can append between reading the parent and
    # writing this row. The placeholder keeps the unique hash column satisfied.
    event = AuditEvent(
        recorded_at=utcnow(),
        actor=caller.actor,
        action=action,
        target=target,
        request_id=caller.request_id,
        details=dict(details or {}),
        prev_hash=GENESIS,
        hash=secrets.token_hex(32),
    )
    session.add(event)
    session.flush()
    event.prev_hash = _last_hash(session, before=event.id)
    event.hash = compute_hash(event, event.prev_hash)
    session.flush()
    return event


def record_many(session: Db, caller: Caller, events: Sequence[Mapping[str, Any]]) -> None:
    """Append many events by `caller` (each given as `record`'s keyword arguments); no commit."""
    if not is_postgresql(session):
        for event in events:
            record(session, caller, **event)
        return
    _lock_chain(session)
    parent = _last_hash(session)
    # Ids drawn while holding the lock come after every committed event.
    ids = sorted(
        session.scalars(
            sa.text(
                "SELECT nextval(pg_get_serial_sequence('audit_events', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": len(events)},
        ).all()
    )
    now = utcnow()
    rows = []
    for event_id, event in zip(ids, events, strict=True):
        row: dict[str, Any] = {
            "id": event_id,
            "recorded_at": now,
            "actor": caller.actor,
            "action": event["action"],
            "target": event.get("target"),
            "request_id": caller.request_id,
            "details": dict(event.get("details") or {}),
            "prev_hash": parent,
        }
        row["hash"] = parent = _digest({k: row[k] for k in _HASHED}, row["prev_hash"])
        rows.append(row)
    session.execute(sa.insert(AuditEvent), rows)


def _lock_chain(session: Db) -> None:
    session.execute(sa.select(sa.func.pg_advisory_xact_lock(_CHAIN_LOCK)))


def _last_hash(session: Db, before: int | None = None) -> str:
    stmt = sa.select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    if before is not None:
        stmt = stmt.where(AuditEvent.id < before)
    return session.scalars(stmt).first() or GENESIS


def _events(session: Db, batch: int) -> Iterator[sa.Row[Any]]:
    # Plain rows, read in keyset batches: a long trail never sits in memory or
    # in the caller's identity map.
    table = AuditEvent.__table__
    last = 0
    while True:
        rows = session.execute(
            sa.select(table).where(table.c.id > last).order_by(table.c.id).limit(batch)
        ).all()
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1].id


def verify(session: Db, *, batch: int = 1000) -> tuple[BrokenLink | None, int]:
    """Walk the chain oldest first: the first broken link (or None) and events checked."""
    expected_prev = GENESIS
    checked = 0
    for event in _events(session, batch):
        if event.prev_hash != expected_prev:
            return BrokenLink(event.id, "prev_hash does not match the preceding event"), checked
        if compute_hash(event, event.prev_hash) != event.hash:
            return BrokenLink(event.id, "hash does not match the event's contents"), checked
        expected_prev = event.hash
        checked += 1
    return None, checked


def events_query(
    *, actor: str | None, action: str | None, targets: list[str] | None
) -> sa.Select[tuple[AuditEvent]]:
    """Audit events matching the given filters (unordered; the caller paginates)."""
    stmt = sa.select(AuditEvent)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if targets:
        stmt = stmt.where(AuditEvent.target.in_(targets))
    return stmt
