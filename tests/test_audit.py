"""The audit trail's hash chain: verification, tampering, concurrent writers, key CLI events."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from flask import Flask

from mobile_api.extensions import db
from mobile_api.services import audit
from mobile_api.services.caller import Caller
from models import AuditEvent


def _write(app: Flask, count: int, actor: str = "key:test") -> list[int]:
    with app.app_context():
        ids = []
        for i in range(count):
            event = audit.record(
                db.session,
                Caller(actor=actor, role="admin"),
                action="probe",
                target=f"t{i}",
                details={"n": i},
            )
            db.session.commit()
            ids.append(event.id)
        db.session.remove()
    return ids


def _verify(app: Flask) -> tuple[audit.BrokenLink | None, int]:
    with app.app_context():
        return audit.verify(db.session, batch=2)


def test_an_untouched_chain_verifies(app: Flask) -> None:
    assert _verify(app) == (None, 0)
    _write(app, 5)
    assert _verify(app) == (None, 5)
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0
    assert "intact: 5 events" in result.output


def test_an_edited_event_is_the_first_broken_link(app: Flask) -> None:
    ids = _write(app, 4)
    with app.app_context():
        db.session.execute(
            sa.update(AuditEvent).where(AuditEvent.id == ids[1]).values(actor="key:someone-else")
        )
        db.session.commit()
    broken, checked = _verify(app)
    assert broken is not None
    assert (broken.event_id, checked) == (ids[1], 1)
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    assert f"broken at event {ids[1]}" in result.output


def test_rehashing_an_edited_event_breaks_the_next_link(app: Flask) -> None:
    ids = _write(app, 3)
    with app.app_context():
        event = db.session.get(AuditEvent, ids[1])
        assert event is not None
        event.details = {"n": 99}
        event.hash = audit.compute_hash(event, event.prev_hash)
        db.session.commit()
    broken, _ = _verify(app)
    assert broken is not None
    assert broken.event_id == ids[2]
    assert "prev_hash" in broken.reason


def test_a_deleted_event_breaks_the_chain(app: Flask) -> None:
    ids = _write(app, 3)
    with app.app_context():
        db.session.execute(sa.delete(AuditEvent).where(AuditEvent.id == ids[1]))
        db.session.commit()
    broken, _ = _verify(app)
    assert broken is not None
    assert broken.event_id == ids[2]


def test_concurrent_writers_never_fork_the_chain(app: Flask) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            _write(app, 8, actor=f"key:writer{n}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _verify(app) == (None, 32)


def test_key_commands_are_audited(app: Flask) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(args=["keys", "create", "--role", "support", "--name", "desk"])
    assert created.exit_code == 0
    secret = created.output.strip().splitlines()[-1]
    with app.app_context():
        key_id = db.session.scalars(sa.select(AuditEvent.target)).one()
    assert runner.invoke(args=["keys", "revoke", key_id]).exit_code == 0
    assert runner.invoke(args=["keys", "revoke", key_id]).exit_code == 0  # already revoked
    with app.app_context():
        events = db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id)).all()
        trail = [(e.actor, e.action, e.target, e.details) for e in events]
    assert trail == [
        ("cli", "key.created", key_id, {"role": "support"}),
        ("cli", "key.revoked", key_id, {}),  # once: the second revoke changed nothing
    ]
    assert secret not in str(trail)
