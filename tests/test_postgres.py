"""Behaviour that needs a real PostgreSQL server: concurrency and lost connections."""

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


def _device_after_backends_die(app):
    """A client and device credential of `app`, whose pooled connections were then killed."""
    from mobile_api.extensions import db
    from mobile_api.services import keys

    with app.app_context():
        _, secret = keys.create(db.session, "app", "connections")
    client = app.test_client()
    response = client.post("/v1/devices", json=device_body(), headers=bearer(secret))
    assert response.status_code == 201
    assert _kill_app_connections(app.config["SQLALCHEMY_DATABASE_URI"]) >= 1
    return client, bearer(response.get_json()["device_token"])


def _kill_app_connections(database_url: str) -> int:
    """Terminate every server process serving the app's database, as a restart would."""
    import sqlalchemy as sa

    url = sa.make_url(database_url)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": url.database},
            ).scalar_one()
    finally:
        admin.dispose()
    return int(killed)


@pytest.fixture
def app_on_pg(postgres_url):
    from tests.conftest import make_app

    built = []

    def build(**overrides):
        app = make_app(postgres_url, RATELIMIT_ENABLED=False, **overrides)
        migrate_once(app)
        built.append(app)
        return app

    yield build
    for app in built:
        with app.app_context():
            from mobile_api.extensions import db

            db.engine.dispose()
    if built:
        wipe(built[0])


def test_a_connection_that_died_while_idle_is_replaced_before_the_request_uses_it(app_on_pg):
    client, device = _device_after_backends_die(app_on_pg(DATABASE_PING_AFTER_IDLE_SECONDS=0.0))

    response = client.get("/v1/devices/me", headers=device)

    assert response.status_code == 200


def test_a_connection_lost_in_busy_use_fails_one_request_with_503_then_recovers(app_on_pg):
    # Busy: no connection has been idle long enough to be pinged before use.
    client, device = _device_after_backends_die(app_on_pg(DATABASE_PING_AFTER_IDLE_SECONDS=3600))

    failed = client.get("/v1/devices/me", headers=device)
    assert failed.status_code == 503
    assert failed.get_json()["error"] == "database_unavailable"
    assert failed.headers["Retry-After"] == "5"

    assert client.get("/v1/devices/me", headers=device).status_code == 200
