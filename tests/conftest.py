"""Fixtures: an app on a migrated database (SQLite by default, PostgreSQL via DATABASE_URL)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from flask_migrate import upgrade

from mobile_api import create_app
from mobile_api.extensions import db
from mobile_api.services import categories
from mobile_api.services import keys as key_service

POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT = "redis://127.0.0.1:6379/0"
REDIS_URL = os.environ.get("TEST_REDIS_URL", REDIS_DEFAULT)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """Under CI (CI=true) a skipped test fails: skips hide breakage."""
    report = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {report.longrepr}"
    return report


def _url(value: str) -> sa.URL:
    return sa.make_url(value)


@contextlib.contextmanager
def scratch_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards (skips if unreachable)."""
    base = _url(os.environ.get("TEST_POSTGRES_URL", POSTGRES_DEFAULT))
    name = f"mobile_api_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {base.render_as_string()}: {exc}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A scratch PostgreSQL database for this test run, dropped afterwards."""
    with scratch_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    """The database the suite runs on: DATABASE_URL's server if PostgreSQL, else SQLite."""
    if os.environ.get("DATABASE_URL", "").startswith("postgresql"):
        os.environ.setdefault("TEST_POSTGRES_URL", os.environ["DATABASE_URL"])
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"


def make_app(database_url: str, **overrides: Any) -> Flask:
    """An app configured for tests on the given database."""
    settings = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": "memory://",
        "REDIS_URL": None,
        "CELERY_BROKER_URL": None,
        "FCM_CREDENTIALS": None,
    }
    settings.update(overrides)
    return create_app(settings)


_migrated: set[str] = set()


def migrate_once(app: Flask) -> None:
    """Create the schema through the migrations, once per database."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url in _migrated:
        return
    with app.app_context():
        upgrade()
    _migrated.add(url)


def wipe(app: Flask) -> None:
    """Delete every row of every table, children first."""
    with app.app_context():
        db.session.rollback()
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()
        # Rows the migrations seed, which every test expects.
        categories.ensure_built_ins(db.session)
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def app_factory(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build apps on the test database with extra settings; wiped afterwards."""
    built: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        # The apps of one test share a provider limiter, as the processes of one host do;
        # no slot reserved by one test delays the next.
        overrides.setdefault("GEOCODER_LIMITER_FILE", str(tmp_path / "geocoder-slot"))
        app = make_app(database_url, **overrides)
        migrate_once(app)
        built.append(app)
        return app

    yield build
    if built:
        wipe(built[0])


@pytest.fixture
def app(app_factory: Callable[..., Flask]) -> Flask:
    """The app under test, rate limits on, in-memory limiter."""
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of `app`."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A CLI runner of `app`."""
    return app.test_cli_runner()


@pytest.fixture
def make_key(app: Flask) -> Callable[[str], str]:
    """Create an API key of a role; returns its secret."""

    def make(role: str) -> str:
        with app.app_context():
            _, secret = key_service.create(db.session, role, f"test {role}")
        return secret

    return make


def bearer(secret: str) -> dict[str, str]:
    """Authorization header for a secret."""
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def app_key(make_key: Callable[[str], str]) -> str:
    """The secret of an `app` key (registers devices)."""
    return make_key("app")


_counter = iter(range(10**9))


def device_body(**overrides: Any) -> dict[str, Any]:
    """A valid registration body with a fresh installation id."""
    body: dict[str, Any] = {
        "installation_id": f"install-{uuid.uuid4().hex[:12]}-{next(_counter)}",
        "platform": "android",
        "os_version": "14",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def register(client: FlaskClient, app_key: str) -> Callable[..., tuple[dict[str, Any], str]]:
    """Register a device; returns (device json, device token)."""

    def do(**overrides: Any) -> tuple[dict[str, Any], str]:
        response = client.post(
            "/v1/devices", json=device_body(**overrides), headers=bearer(app_key)
        )
        assert response.status_code == 201, response.get_json()
        body = response.get_json()
        return body["device"], body["device_token"]

    return do


# The browser fixtures (headless Chromium, a live server) for every test module.
from tests.browser import browser, live_server  # noqa: E402, F401


@pytest.fixture
def redis_prefix() -> Iterator[tuple[redis.Redis, str]]:
    """A Redis client and a key prefix of this test's own, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis server at {REDIS_URL}")
    prefix = f"test:mobile_api:{uuid.uuid4().hex}:"
    yield client, prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()
