"""Termination → purge with a controllable clock, retention, concurrent purges, export sections."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from mobile_api import periodic
from mobile_api.extensions import db
from mobile_api.services import audit, export, privacy
from models import AccountTermination, AccountTombstone, AuditEvent, Device, utcnow
from models.base import UTCDateTime
from tests.conftest import bearer, device_body, make_app, migrate_once, wipe
from tests.privacy_fixtures import (
    audit_events,
    backdate_termination,
    rows_mentioning,
    seed_terminated_accounts,
    staff,
    unique,
)

__all__ = ["staff"]

Register = Callable[..., tuple[dict[str, Any], str]]
Staff = Callable[[str], dict[str, str]]


@pytest.fixture
def terminated_account(client: FlaskClient, register: Register, staff: Staff) -> str:
    """An account with one device, terminated just now through the API."""
    account = unique("acct")
    register(account_id=account)
    response = client.post(f"/v1/admin/accounts/{account}/terminate", headers=staff("privacy"))
    assert response.status_code == 200
    return account


def _at(days: float) -> str:
    """--now for a purge run `days` from the real clock."""
    return (utcnow() + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def test_purge_erases_a_terminated_account_once_its_delay_has_passed(
    app: Flask,
    client: FlaskClient,
    register: Register,
    staff: Staff,
    app_key: str,
) -> None:
    account = unique("acct")
    devices = [register(account_id=account, push_token=unique("fcm"))[0] for _ in range(2)]
    _, kept_token = register(account_id=unique("acct"))
    terminated = client.post(f"/v1/admin/accounts/{account}/terminate", headers=staff("privacy"))
    assert terminated.status_code == 200
    runner = app.test_cli_runner()

    backdate_termination(app, account, days=13.9)
    early = runner.invoke(args=["privacy", "purge"])
    assert early.exit_code == 0, early.output
    assert "erased 0 accounts, 0 devices" in early.output
    assert rows_mentioning(app, account) != []

    backdate_termination(app, account, days=14.01)
    due = runner.invoke(args=["privacy", "purge"])
    assert due.exit_code == 0, due.output
    assert "erased 1 accounts, 2 devices" in due.output
    needles = [account] + [d[k] for d in devices for k in ("id", "installation_id", "push_token")]
    assert rows_mentioning(app, *needles) == []
    assert client.get("/v1/devices/me", headers=bearer(kept_token)).status_code == 200

    again = runner.invoke(args=["privacy", "purge"])
    assert "erased 0 accounts, 0 devices" in again.output

    # The purged account stays refused, though only a keyed hash of it remains.
    refused = client.post(
        "/v1/devices", json=device_body(account_id=account), headers=bearer(app_key)
    )
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "account_terminated"

    (purged,) = audit_events(client, staff("privacy"), target=account, action="account.purged")
    assert purged["details"] == {"devices": 2}
    runs = audit_events(client, staff("privacy"), action="purge.run")
    assert [(r["details"]["accounts"], r["details"]["devices"]) for r in runs] == [(1, 2)]
    assert {r["actor"] for r in runs} == {"cli"}


def test_runs_with_nothing_to_erase_leave_the_audit_trail_alone(
    app: Flask, client: FlaskClient, staff: Staff, terminated_account: str
) -> None:
    runner = app.test_cli_runner()
    before = audit_events(client, staff("privacy"))
    with app.app_context():
        for _ in range(3):  # the periodic job, hour after hour, before the account is due
            periodic.run("privacy-purge")
    assert runner.invoke(args=["privacy", "purge"]).exit_code == 0
    assert audit_events(client, staff("privacy")) == before

    backdate_termination(app, terminated_account, days=15)
    with app.app_context():
        periodic.run("privacy-purge")
        periodic.run("privacy-purge")
    runs = audit_events(client, staff("privacy"), action="purge.run")
    assert [(r["actor"], r["details"]["accounts"]) for r in runs] == [("system", 1)]
    verified = runner.invoke(args=["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert f"{len(before) + 2} events verified" in verified.output  # account.purged, purge.run


def test_a_failed_purge_run_is_recorded_with_what_it_had_erased(
    app: Flask, client: FlaskClient, staff: Staff, terminated_account: str
) -> None:
    backdate_termination(app, terminated_account, days=15)
    # A rule whose table the database lacks: the retention step fails after the erasures.
    missing = sa.Table(
        f"retention_missing_{uuid.uuid4().hex[:8]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    with app.app_context(), pytest.raises(sa.exc.DBAPIError) as failure:
        privacy.purge(
            db.session,
            now=utcnow(),
            purge_after_days=14,
            retention_days={"PROBE_RETENTION_DAYS": 30},
            rules=[privacy.RetentionRule(missing.name, "received_at", "PROBE_RETENTION_DAYS")],
            metadata=missing.metadata,
        )
    assert rows_mentioning(app, terminated_account) == []
    (run,) = audit_events(client, staff("privacy"), action="purge.run")
    assert run["details"] == {
        "accounts": 1,
        "devices": 1,
        "retention": {missing.name: 0},
        "error": type(failure.value).__name__,
    }
    verified = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert verified.exit_code == 0, verified.output


def test_a_purge_as_of_a_future_time_is_refused(
    app: Flask, client: FlaskClient, staff: Staff, terminated_account: str
) -> None:
    account = terminated_account
    backdate_termination(app, account, days=13.9)
    runner = app.test_cli_runner()

    # A typo of a few hours would erase the account before its 14 days are up.
    typo = runner.invoke(args=["privacy", "purge", "--now", _at(0.2)])
    assert typo.exit_code != 0
    assert "--now" in typo.output and "in the future" in typo.output
    assert rows_mentioning(app, account) != []
    assert audit_events(client, staff("privacy"), action="purge.run") == []

    # A clock a minute ahead of the server's is skew, not a typo; an earlier time is fine.
    for days in (1 / 1440, -1):
        result = runner.invoke(args=["privacy", "purge", "--now", _at(days)])
        assert result.exit_code == 0, result.output
        assert "erased 0 accounts, 0 devices" in result.output
    assert rows_mentioning(app, account) != []


def test_the_purge_delay_in_force_at_the_run_counts(
    app_factory: Callable[..., Flask], terminated_account: str
) -> None:
    shorter = app_factory(PURGE_AFTER_DAYS=2)
    backdate_termination(shorter, terminated_account, days=2.01)
    result = shorter.test_cli_runner().invoke(args=["privacy", "purge"])
    assert "erased 1 accounts, 1 devices" in result.output


def test_purge_on_the_real_clock_leaves_recent_terminations(
    app: Flask, terminated_account: str
) -> None:
    result = app.test_cli_runner().invoke(args=["privacy", "purge"])
    assert result.exit_code == 0
    assert "erased 0 accounts, 0 devices" in result.output
    bad = app.test_cli_runner().invoke(args=["privacy", "purge", "--now", "yesterday"])
    assert bad.exit_code != 0


def test_erasing_a_terminated_account_keeps_refusing_it(
    client: FlaskClient, register: Register, staff: Staff, app_key: str
) -> None:
    account = unique("acct")
    register(account_id=account)
    client.post(f"/v1/admin/accounts/{account}/terminate", headers=staff("privacy"))
    assert (
        client.delete(f"/v1/admin/accounts/{account}", headers=staff("privacy")).status_code == 204
    )
    refused = client.post(
        "/v1/devices", json=device_body(account_id=account), headers=bearer(app_key)
    )
    assert refused.status_code == 403
    # Nothing left to erase or export.
    assert (
        client.delete(f"/v1/admin/accounts/{account}", headers=staff("privacy")).status_code == 404
    )
    assert (
        client.get(f"/v1/admin/accounts/{account}/export", headers=staff("privacy")).status_code
        == 404
    )


@pytest.fixture
def probe_table(app: Flask) -> Iterator[sa.Table]:
    """A throwaway telemetry-like table with a timestamp, outside the app's schema."""
    metadata = sa.MetaData()
    table = sa.Table(
        f"retention_probe_{uuid.uuid4().hex[:8]}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    with app.app_context():
        metadata.create_all(db.engine)
    yield table
    with app.app_context():
        metadata.drop_all(db.engine)


def test_retention_deletes_only_rows_past_their_window(app: Flask, probe_table: sa.Table) -> None:
    now = utcnow()
    ages = [0, 29, 31, 400]
    rule = privacy.RetentionRule(probe_table.name, "received_at", "PROBE_RETENTION_DAYS")
    with app.app_context():
        db.session.execute(
            probe_table.insert(),
            [{"id": i, "received_at": now - timedelta(days=d)} for i, d in enumerate(ages)],
        )
        db.session.commit()
        result = privacy.purge(
            db.session,
            now=now,
            purge_after_days=14,
            retention_days={"PROBE_RETENTION_DAYS": 30},
            rules=[rule, privacy.RetentionRule("not_in_schema", "at", "PROBE_RETENTION_DAYS")],
            metadata=probe_table.metadata,
        )
        left = db.session.scalars(sa.select(probe_table.c.id).order_by(probe_table.c.id)).all()
        # Without a configured window the rule does nothing.
        unset = privacy.purge(
            db.session,
            now=now + timedelta(days=1000),
            purge_after_days=14,
            rules=[rule],
            metadata=probe_table.metadata,
        )
    assert result.retention == {probe_table.name: 2}
    assert left == [0, 1]
    assert unset.retention == {}


def test_retention_deletes_a_backlog_in_bounded_transactions(
    app: Flask, probe_table: sa.Table
) -> None:
    now = utcnow()
    batch = privacy.RETENTION_BATCH_SIZE
    # More than two batches of rows, the expired ones interleaved with recent ones,
    # and one exactly at the cutoff (kept: only rows older than the window go).
    ages = {i: 31 if i % 3 else 1 for i in range(2 * batch + 1000)}
    ages[7] = 30
    expired = [i for i, age in ages.items() if age > 30]
    rule = privacy.RetentionRule(probe_table.name, "received_at", "PROBE_RETENTION_DAYS")
    cutoff = now - timedelta(days=30)
    # Expired rows left after each commit, as another connection sees them.
    left_after_commit = [len(expired)]

    def on_commit(session: Any) -> None:
        with db.engine.connect() as other:
            count = sa.select(sa.func.count()).where(probe_table.c.received_at < cutoff)
            left_after_commit.append(other.scalar(count))

    with app.app_context():
        db.session.execute(
            probe_table.insert(),
            [{"id": i, "received_at": now - timedelta(days=age)} for i, age in ages.items()],
        )
        db.session.commit()
        session = db.session()
        sa.event.listen(session, "after_commit", on_commit)
        try:
            result = privacy.purge(
                db.session,
                now=now,
                purge_after_days=14,
                retention_days={"PROBE_RETENTION_DAYS": 30},
                rules=[rule],
                metadata=probe_table.metadata,
            )
        finally:
            sa.event.remove(session, "after_commit", on_commit)
        left = db.session.scalars(sa.select(probe_table.c.id).order_by(probe_table.c.id)).all()
    assert result.retention == {probe_table.name: len(expired)}
    assert left == sorted(set(ages) - set(expired))
    # Each transaction deleted at most one batch.
    deleted = [a - b for a, b in itertools.pairwise(left_after_commit) if a != b]
    assert deleted == [batch, len(expired) - batch], left_after_commit


def test_purge_enforces_telemetry_retention_on_the_real_tables(
    app_factory: Callable[..., Flask], register: Callable[..., Any]
) -> None:
    from models import DeviceVersionChange, TelemetryEvent

    app = app_factory(TELEMETRY_RETENTION_DAYS=7)
    device, _ = register()
    now = utcnow()
    with app.app_context():
        for age in (8, 6):
            db.session.add(
                TelemetryEvent(
                    device_id=device["id"],
                    name=f"aged_{age}",
                    occurred_at=now - timedelta(days=age),
                    received_at=now - timedelta(days=age),
                    properties={},
                )
            )
            db.session.add(
                DeviceVersionChange(
                    device_id=device["id"],
                    field="os_version",
                    old_value="1",
                    new_value="2",
                    changed_at=now - timedelta(days=age),
                )
            )
        db.session.commit()
        result = privacy.run_purge()
        names = db.session.scalars(sa.select(TelemetryEvent.name)).all()
        changes = db.session.scalar(sa.select(sa.func.count()).select_from(DeviceVersionChange))
    assert result.retention["telemetry_events"] == 1
    assert names == ["aged_6"]
    assert changes == 1
    assert app.config["DELIVERY_RETENTION_DAYS"] == 180


def test_concurrent_purge_runs_erase_each_account_once(postgres_url: str) -> None:
    app = make_app(postgres_url)
    migrate_once(app)
    try:
        with app.app_context():
            accounts = seed_terminated_accounts(
                db.session, 24, 2, terminated_at=utcnow() - timedelta(days=20)
            )
            db.session.remove()
        results: list[privacy.PurgeResult] = []
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def run() -> None:
            with app.app_context():
                try:
                    start.wait()
                    results.append(
                        privacy.purge(db.session, now=utcnow(), purge_after_days=14, batch_size=2)
                    )
                except BaseException as exc:  # reported below; a thread cannot fail the test
                    errors.append(exc)
                finally:
                    db.session.remove()

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sum(r.accounts for r in results) == 24
        assert sum(r.devices for r in results) == 48
        with app.app_context():
            purged = db.session.scalars(
                sa.select(AuditEvent.target).where(AuditEvent.action == "account.purged")
            ).all()
            assert sorted(purged) == sorted(privacy.subject(a) for a in accounts)
            assert db.session.scalar(sa.select(sa.func.count()).select_from(Device)) == 0
            assert (
                db.session.scalar(sa.select(sa.func.count()).select_from(AccountTermination)) == 0
            )
            assert db.session.scalar(sa.select(sa.func.count()).select_from(AccountTombstone)) == 24
            # One purge.run event per run that erased something, none for a run that found
            # every due account taken by the others.
            runs = sum(1 for r in results if r.erased_anything)
            assert audit.verify(db.session) == (None, 24 + runs)
    finally:
        wipe(app)


def test_export_sections_can_be_added_by_other_modules(
    client: FlaskClient, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "_DEVICE_SECTIONS", dict(export._DEVICE_SECTIONS))

    @export.device_section("probe_events")
    def _probe(session: Any, device: Device) -> list[dict[str, str]]:
        return [{"device": device.id}]

    with pytest.raises(ValueError, match="already defined"):
        export.device_section("consents")(_probe)
    device, token = register()
    document = client.get("/v1/devices/me/export", headers=bearer(token)).get_json()
    assert {"exported_at", "device", "preferences", "consents", "probe_events"} <= set(document)
    assert document["probe_events"] == [{"device": device["id"]}]


def test_every_retention_rule_names_a_real_table_and_time_column() -> None:
    # A rule naming a table that does not exist would silently keep data forever.
    from models import Base

    for rule in privacy.RETENTION:
        table = Base.metadata.tables.get(rule.table)
        assert table is not None, rule
        assert rule.column in table.c, rule
        assert isinstance(table.c[rule.column].type, UTCDateTime), rule
        # Retention deletes in batches keyed on a one-column primary key.
        assert len(table.primary_key.columns) == 1, rule
