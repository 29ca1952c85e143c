"""Behaviour that needs a real PostgreSQL server: concurrent registration."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import bearer, device_body, migrate_once, wipe

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_app(postgres_url):
    from tests.conftest import make_app

    app = make_app(postgres_url, RATELIMIT_ENABLED=False)
    migrate_once(app)
    yield app
    wipe(app)


def test_twenty_concurrent_registrations_of_one_installation_make_one_device(pg_app):
    import sqlalchemy as sa

    from mobile_api.extensions import db
    from mobile_api.services import keys
    from models import Device

    with pg_app.app_context():
        _, secret = keys.create(db.session, "app", "race")
    body = device_body()
    barrier = threading.Barrier(20)
    statuses: list[int] = []
    lock = threading.Lock()

    def register() -> None:
        client = pg_app.test_client()
        barrier.wait()
        status = client.post("/v1/devices", json=body, headers=bearer(secret)).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=register) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [409] * 19
    with pg_app.app_context():
        count = db.session.scalar(
            sa.select(sa.func.count()).where(Device.installation_id == body["installation_id"])
        )
        assert count == 1


def test_concurrent_claims_of_one_push_token_leave_one_holder(pg_app):
    import sqlalchemy as sa

    from mobile_api.extensions import db
    from mobile_api.services import keys
    from models import Device

    with pg_app.app_context():
        _, secret = keys.create(db.session, "app", "race")
    barrier = threading.Barrier(10)
    statuses: list[int] = []

    def register() -> None:
        client = pg_app.test_client()
        barrier.wait()
        response = client.post(
            "/v1/devices", json=device_body(push_token="contested"), headers=bearer(secret)
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=register) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 10
    with pg_app.app_context():
        holders = db.session.scalar(
            sa.select(sa.func.count()).where(Device.push_token == "contested")
        )
        assert holders == 1


def test_concurrent_terminations_of_one_account_terminate_it_once(pg_app):
    import sqlalchemy as sa

    from mobile_api.extensions import db
    from mobile_api.services import keys
    from models import AccountTermination, AuditEvent

    with pg_app.app_context():
        _, secret = keys.create(db.session, "privacy", "race")
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def terminate() -> None:
        client = pg_app.test_client()
        barrier.wait()
        response = client.post("/v1/admin/accounts/acct-race/terminate", headers=bearer(secret))
        statuses.append(response.status_code)

    threads = [threading.Thread(target=terminate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8
    with pg_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AccountTermination)) == 1
        events = db.session.scalar(
            sa.select(sa.func.count()).where(AuditEvent.action == "account.terminated")
        )
        assert events == 1
