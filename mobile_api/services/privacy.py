"""Privacy operations: export, erasure, account termination, the purge run and retention.

Devices and accounts are named in the audit trail only by `audit.subject()` (an HMAC
of the id under SECRET_KEY, read from the current app's config), so what remains
after an erasure says that something was erased without saying whom it concerned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from mobile_api.errors import AccountTerminated
from mobile_api.extensions import db
from mobile_api.services import (
    Db,
    audit,
    campaigns,
    consent,
    delivery_counts,
    dialect_insert,
    erasure,
    export,
)
from mobile_api.services.caller import SYSTEM, Caller
from models import (
    AccountTermination,
    AccountTombstone,
    AuditEvent,
    Base,
    ConsentSource,
    Device,
    Purpose,
    utcnow,
)

log = logging.getLogger(__name__)

ERASURE_REASONS = ("user_request", "child_under_13", "other")


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Rows of `table` whose `column` is older than config[`setting`] days are purged.

    `before`, if set, is called with the session first: what must outlive the rows
    (aggregates kept elsewhere) is saved there. `deleted`, if set, is called in each
    batch's transaction with the `returning` columns of the rows it deleted.
    """

    table: str
    column: str
    setting: str
    before: Callable[[Db], object] | None = None
    returning: tuple[str, ...] = ()
    deleted: Callable[[Db, Sequence[Any]], object] | None = None


# Tables owned by other modules; a rule whose table is not in the schema is skipped.
RETENTION: list[RetentionRule] = [
    RetentionRule("telemetry_events", "received_at", "TELEMETRY_RETENTION_DAYS"),
    RetentionRule("device_version_changes", "changed_at", "TELEMETRY_RETENTION_DAYS"),
    RetentionRule(
        "campaign_deliveries",
        "updated_at",
        "DELIVERY_RETENTION_DAYS",
        # A campaign's counts outlive its delivery rows; the running ones follow them.
        before=campaigns.store_all_final_counts,
        returning=("campaign_id", "status", "reason"),
        deleted=delivery_counts.forget,
    ),
    # A notification and its deliveries (cascade) go together.
    RetentionRule("notifications", "created_at", "DELIVERY_RETENTION_DAYS"),
]


# Rows a retention rule deletes per transaction: a backlog of millions goes in short
# transactions, none holding its locks (on SQLite, the database's one write lock) for long.
RETENTION_BATCH_SIZE = 5000


@dataclass(frozen=True, slots=True)
class Termination:
    """An account's termination and when its data will be purged."""

    account_id: str
    terminated_at: datetime
    purge_due_at: datetime
    devices: int


@dataclass(slots=True)
class PurgeResult:
    """What one purge run erased."""

    accounts: int = 0
    devices: int = 0
    retention: dict[str, int] = field(default_factory=dict)

    @property
    def erased_anything(self) -> bool:
        """Whether the run erased an account, a device or a row past its retention."""
        return bool(self.accounts or self.devices or any(self.retention.values()))


def subject(identifier: str) -> str:
    """The keyed hash that names a device or account in the audit trail."""
    return audit.subject(current_app.config["SECRET_KEY"], identifier)


def audit_query(
    *, actor: str | None, action: str | None, target: str | None
) -> sa.Select[tuple[AuditEvent]]:
    """Audit events by actor, action and target; `target` may be a raw device or account id."""
    return audit.events_query(
        actor=actor,
        action=action,
        # Devices and accounts are recorded by keyed hash: accept the raw id too.
        targets=[target, subject(target)] if target else None,
    )


def is_terminated(session: Db, account_id: str | None) -> bool:
    """Whether the account is terminated (and not yet purged); False without an account."""
    return account_id is not None and session.get(AccountTermination, account_id) is not None


def ensure_account_open(session: Db, account_id: str | None) -> None:
    """Refuse (403 account_terminated) an account that is terminated or was purged."""
    if not account_id:
        return
    if is_terminated(session, account_id):
        raise AccountTerminated()
    if session.get(AccountTombstone, subject(account_id)) is not None:
        raise AccountTerminated()


def _delete_devices(session: Db, account_ids: Sequence[str]) -> dict[str, int]:
    """Erase the accounts' devices and their ids (as the inventory says); devices per account."""
    rows = session.execute(
        sa.select(Device.id, Device.account_id).where(Device.account_id.in_(account_ids))
    ).all()
    erasure.erase_devices(session, [device_id for device_id, _ in rows], subject, account_ids)
    counts: dict[str, int] = {}
    for _, account_id in rows:
        counts[account_id] = counts.get(account_id, 0) + 1
    return counts


def _forget_terminations(session: Db, account_ids: Sequence[str], now: datetime) -> None:
    """Drop the raw account ids; keyed-hash tombstones keep later registrations refused."""
    session.execute(
        dialect_insert(session)(AccountTombstone)
        .values([{"account_hash": subject(a), "purged_at": now} for a in account_ids])
        .on_conflict_do_nothing(index_elements=[AccountTombstone.account_hash])
    )
    session.execute(
        sa.delete(AccountTermination)
        .where(AccountTermination.account_id.in_(account_ids))
        .execution_options(synchronize_session=False)
    )


def erase_device(
    session: Db,
    device_id: str,
    caller: Caller,
    *,
    reason: str,
) -> bool:
    """Erase a device and everything tied to it in one transaction; False if unknown."""
    account_id = session.scalar(sa.select(Device.account_id).where(Device.id == device_id))
    # The account's id goes too when this was its last device, unless the account awaits its
    # purge (its termination row keeps the id until then).
    last_of_account = (
        account_id is not None
        and not is_terminated(session, account_id)
        and session.scalar(
            sa.select(sa.func.count())
            .select_from(Device)
            .where(Device.account_id == account_id, Device.id != device_id)
        )
        == 0
    )
    accounts = [account_id] if last_of_account and account_id is not None else []
    if not erasure.erase_devices(session, [device_id], subject, accounts):
        session.rollback()
        return False
    audit.record(
        session,
        caller,
        action="device.erased",
        target=subject(device_id),
        details={"reason": reason},
    )
    session.commit()
    log.info("erased a device (reason %s)", reason)
    return True


def erase_account(
    session: Db,
    account_id: str,
    caller: Caller,
    *,
    reason: str,
) -> int | None:
    """Erase every device of an account and its termination; devices erased, None if unknown."""
    termination = session.get(AccountTermination, account_id, with_for_update=True)
    devices = sum(_delete_devices(session, [account_id]).values())
    if not devices and termination is None:
        session.rollback()
        return None
    if termination is not None:
        _forget_terminations(session, [account_id], utcnow())
    audit.record(
        session,
        caller,
        action="account.erased",
        target=subject(account_id),
        details={"reason": reason, "devices": devices},
    )
    session.commit()
    log.info("erased an account with %s devices (reason %s)", devices, reason)
    return devices


def terminate(
    session: Db,
    account_id: str,
    caller: Caller,
    *,
    purge_after_days: int,
) -> Termination:
    """Terminate an account: its devices get no more pushes; purge is due later. Idempotent."""
    now = utcnow()
    # Insert-or-nothing rather than check-then-insert: two concurrent requests
    # terminate once, and the second answers like a repeat instead of a 500.
    created = session.execute(
        dialect_insert(session)(AccountTermination)
        .values(account_id=account_id, terminated_at=now)
        .on_conflict_do_nothing(index_elements=[AccountTermination.account_id])
        .returning(AccountTermination.account_id)
    ).scalar_one_or_none()
    devices = session.scalars(sa.select(Device).where(Device.account_id == account_id)).all()
    if created is not None:
        # A disabled device was undeliverable already.
        consent.record_many(
            session,
            [device.id for device in devices if device.disabled_at is None],
            Purpose.PUSH_DELIVERY,
            False,
            ConsentSource.SYSTEM,
            at=now,
        )
        audit.record(
            session,
            caller,
            action="account.terminated",
            target=subject(account_id),
            details={"devices": len(devices)},
        )
    session.commit()
    termination = session.get(AccountTermination, account_id)
    assert termination is not None
    return Termination(
        account_id=account_id,
        terminated_at=termination.terminated_at,
        purge_due_at=termination.terminated_at + timedelta(days=purge_after_days),
        devices=len(devices),
    )


def _audited_export(
    session: Db,
    document: dict[str, Any] | None,
    *,
    action: str,
    identifier: str,
    caller: Caller,
) -> dict[str, Any] | None:
    if document is None:
        session.rollback()
        return None
    audit.record(session, caller, action=action, target=subject(identifier))
    session.commit()
    return document


def export_device(session: Db, device_id: str, caller: Caller) -> dict[str, Any] | None:
    """Everything held about a device, for staff (audited); None if unknown."""
    device = session.get(Device, device_id)
    document = export.export_device(session, device) if device is not None else None
    return _audited_export(
        session,
        document,
        action="device.exported",
        identifier=device_id,
        caller=caller,
    )


def export_account(session: Db, account_id: str, caller: Caller) -> dict[str, Any] | None:
    """Everything held about an account, for staff (audited); None if unknown."""
    return _audited_export(
        session,
        export.export_account(session, account_id),
        action="account.exported",
        identifier=account_id,
        caller=caller,
    )


def _apply_retention(
    session: Db,
    deleted: dict[str, int],
    *,
    now: datetime,
    retention_days: Mapping[str, int],
    rules: Sequence[RetentionRule],
    metadata: sa.MetaData,
    batch_size: int,
) -> None:
    """Delete the rows past their retention; rows deleted per table go into `deleted`."""
    for rule in rules:
        table = metadata.tables.get(rule.table)
        days = retention_days.get(rule.setting)
        if table is None or days is None:
            continue
        if rule.before is not None:
            rule.before(session)
        deleted[rule.table] = 0
        expired = table.c[rule.column] < now - timedelta(days=days)
        for rows in _delete_in_batches(session, table, expired, batch_size, rule):
            deleted[rule.table] += rows


def _delete_in_batches(
    session: Db,
    table: sa.Table,
    expired: sa.ColumnElement[bool],
    batch_size: int,
    rule: RetentionRule,
) -> Iterator[int]:
    """Delete the rows matching `expired`, one committed batch at a time; rows per batch.

    Keyset on the primary key: each batch is the next `batch_size` matching keys above the
    last batch's, so no batch scans again what an earlier one deleted, and the rows go by
    primary-key lookups whatever other index the planner might prefer for `expired`.
    """
    (key,) = table.primary_key.columns
    last: Any = None
    while True:
        window = sa.select(key).where(expired).order_by(key).limit(batch_size)
        if last is not None:
            window = window.where(key > last)
        columns = [table.c[name] for name in rule.returning]
        rows = session.execute(sa.delete(table).where(key.in_(window)).returning(key, *columns))
        keys = []
        gone = []
        for row in rows:
            keys.append(row[0])
            gone.append(row[1:])
        if rule.deleted is not None and gone:
            rule.deleted(session, gone)
        session.commit()
        if not keys:
            return
        yield len(keys)
        last = max(keys)


def _purge_due_accounts(
    session: Db,
    result: PurgeResult,
    *,
    now: datetime,
    purge_after_days: int,
    caller: Caller,
    batch_size: int,
) -> None:
    """Erase the due accounts batch by batch, each batch in its own transaction."""
    cutoff = now - timedelta(days=purge_after_days)
    while True:
        due = session.scalars(
            sa.select(AccountTermination.account_id)
            .where(AccountTermination.terminated_at <= cutoff)
            .order_by(AccountTermination.terminated_at, AccountTermination.account_id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        if not due:
            session.rollback()
            return
        counts = _delete_devices(session, due)
        audit.record_many(
            session,
            caller,
            [
                {
                    "action": "account.purged",
                    "target": subject(account_id),
                    "details": {"devices": counts.get(account_id, 0)},
                }
                for account_id in due
            ],
        )
        _forget_terminations(session, due, now)
        session.commit()
        result.accounts += len(due)
        result.devices += sum(counts.values())


def _record_run(session: Db, result: PurgeResult, caller: Caller, *, error: str | None) -> None:
    details: dict[str, Any] = {
        "accounts": result.accounts,
        "devices": result.devices,
        "retention": result.retention,
    }
    if error is not None:
        details["error"] = error
    audit.record(session, caller, action="purge.run", details=details)
    session.commit()


def purge(
    session: Db,
    *,
    now: datetime,
    purge_after_days: int,
    retention_days: Mapping[str, int] | None = None,
    caller: Caller = SYSTEM,
    batch_size: int = 500,
    rules: Sequence[RetentionRule] | None = None,
    metadata: sa.MetaData | None = None,
) -> PurgeResult:
    """Erase accounts terminated at least `purge_after_days` before `now`, then apply retention.

    Safe to run concurrently: each batch of due terminations is locked with
    SKIP LOCKED on PostgreSQL, so two runs never erase the same account; on
    SQLite the single writer serialises them. Each batch commits on its own.

    A `purge.run` audit event sums up a run that erased something or failed; a run
    with nothing to do (most hourly runs) leaves the audit trail as it was.
    """
    result = PurgeResult()
    try:
        _purge_due_accounts(
            session,
            result,
            now=now,
            purge_after_days=purge_after_days,
            caller=caller,
            batch_size=batch_size,
        )
        _apply_retention(
            session,
            result.retention,
            now=now,
            retention_days=retention_days or {},
            rules=RETENTION if rules is None else rules,
            metadata=Base.metadata if metadata is None else metadata,
            batch_size=RETENTION_BATCH_SIZE,
        )
    except Exception as exc:
        # Batches committed before the failure stay erased: the trail says so, and why it stopped
        # (the exception's class only: a database error's message may quote row values).
        session.rollback()
        try:
            _record_run(session, result, caller, error=type(exc).__name__)
        except Exception as unrecorded:
            session.rollback()
            log.warning(
                "could not record the failed purge run in the audit trail: %s",
                type(unrecorded).__name__,
            )
        raise
    if result.erased_anything:
        _record_run(session, result, caller, error=None)
    log.info("purge erased %s accounts, %s devices", result.accounts, result.devices)
    return result


def run_purge(now: datetime | None = None, *, caller: Caller = SYSTEM) -> PurgeResult:
    """One purge run with the current app's settings (for the CLI, worker and Celery beat)."""
    config = current_app.config
    return purge(
        db.session,
        now=now or utcnow(),
        purge_after_days=int(config["PURGE_AFTER_DAYS"]),
        retention_days={
            rule.setting: int(config[rule.setting])
            for rule in RETENTION
            if config.get(rule.setting) is not None
        },
        caller=caller,
    )
