"""mobile_api: the backend of the helpdesk mobile app."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from mobile_api import config, observability, push
from mobile_api.extensions import api, db, limiter, migrate
from mobile_api.services import totp_secrets
from mobile_api.services.audience import register_sqlite_functions

MIGRATIONS = str(Path(__file__).resolve().parent.parent / "migrations")


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then environment, then `test_config`."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(config.Defaults)
    app.config.update(config.from_environment())
    if test_config:
        app.config.update(test_config)

    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _secret_key_from_file(
            app.config["SECRET_KEY_FILE"] or os.path.join(app.instance_path, "secret_key")
        )
    if not app.config["SECRET_KEY"]:
        if not (app.debug or app.testing):
            raise RuntimeError("SECRET_KEY must be set (see README: Configuration)")
        app.config["SECRET_KEY"] = "insecure-development-key"  # noqa: S105 - debug/testing only
    if app.config.get("CONSOLE_TOTP_KEY"):
        totp_secrets.check_key(app.config["CONSOLE_TOTP_KEY"])
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        os.makedirs(app.instance_path, exist_ok=True)
        app.config["SQLALCHEMY_DATABASE_URI"] = (
            f"sqlite:///{os.path.join(app.instance_path, 'mobile_api.sqlite3')}"
        )
    if not app.config["GEOCODER_LIMITER_FILE"]:
        app.config["GEOCODER_LIMITER_FILE"] = os.path.join(app.instance_path, "geocoder-slot")
    if app.config["REDIS_URL"] and app.config["RATELIMIT_STORAGE_URI"] == "memory://":
        app.config["RATELIMIT_STORAGE_URI"] = app.config["REDIS_URL"]
    app.config["MAX_CONTENT_LENGTH"] = app.config.get("MAX_CONTENT_LENGTH") or 1024 * 1024

    observability.configure_logging(app.config["LOG_LEVEL"])
    if app.config["PROXY_FIX_X_FOR"] or app.config["PROXY_FIX_X_PROTO"]:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=app.config["PROXY_FIX_X_FOR"],
            x_proto=app.config["PROXY_FIX_X_PROTO"],
        )

    # Database errors quote no SQL parameters (ids, tokens) in their messages, which
    # end up in logs whichever code path logged them.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "hide_parameters": True,
        **app.config["SQLALCHEMY_ENGINE_OPTIONS"],
    }
    db.init_app(app)
    with app.app_context():
        _tune_engine(db.engine)
        if db.engine.dialect.name != "sqlite" and not app.config["SQLALCHEMY_ENGINE_OPTIONS"].get(
            "pool_pre_ping"
        ):
            _ping_connections_left_idle(db.engine, app.config["DATABASE_PING_AFTER_IDLE_SECONDS"])
        register_sqlite_functions(db.engine)
    migrate.init_app(app, db, directory=MIGRATIONS, render_as_batch=True, compare_type=True)
    limiter.init_app(app)
    api.init_app(app)
    observability.init_app(app)

    from mobile_api import cli, docs
    from mobile_api.routes import admin, campaigns, devices, ops, places, telemetry
    from mobile_api.tasks import make_celery

    places.init_app(app)
    for blueprint in (ops.blp, devices.blp, admin.blp, telemetry.blp, places.blp, campaigns.blp):
        api.register_blueprint(blueprint)
    from mobile_api.routes import categories, inventory, notifications

    api.register_blueprint(inventory.blp)
    api.register_blueprint(categories.blp)
    api.register_blueprint(notifications.blp)
    cli.init_app(app)
    docs.init_app(app)
    push.init_app(app)
    make_celery(app)

    from mobile_api import console

    console.init_app(app)
    return app


def _secret_key_from_file(name: str) -> str | None:
    """The key in file `name` (bin/serve generates instance/secret_key), if there is one.

    So the flask CLI (keys create, audit verify) signs and hashes with the same key as
    the server it sits beside, without SECRET_KEY in every shell. A file others may
    read is refused: the key would be theirs too.
    """
    path = Path(name)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & 0o077:
        raise RuntimeError(f"{path} must be readable by its owner only: chmod 600 {path}")
    return path.read_text(encoding="utf-8").strip() or None


def _tune_engine(engine: sa.Engine) -> None:
    """SQLite: enforce foreign keys (erasure cascades), WAL and a busy timeout."""
    if engine.dialect.name != "sqlite":
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def _ping_connections_left_idle(engine: sa.Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use only if it sat idle for `idle_seconds`.

    Connections go stale while idle (server restarts, firewalls dropping quiet
    sockets); pool_pre_ping would pay a round trip on every checkout to catch that,
    a sixth of a busy registration's database trips. A connection that fails the ping
    is replaced before the request sees it; one that breaks mid-use still fails that
    request with 503 `database_unavailable` and the pool is refreshed.
    """

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool discards this connection and checks out a fresh one.
            raise sa.exc.DisconnectionError(str(exc)) from exc
