"""Benchmark erasure and purge on PostgreSQL.

Run from the worktree root:

    /work/main/.venv/bin/python -m bench.privacy_bench \
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test --repeat 5

It creates a scratch database (dropped afterwards), migrates it, and measures:
  1. erase_account on an account with 10 devices and 100,000 telemetry-like rows;
  2. one purge run over 10,000 due accounts (1 device each, 10 consent records each).

The real telemetry table is built on another branch, so a stand-in child table
with the same shape that matters here (FK to devices.id ON DELETE CASCADE,
indexed on device_id, a timestamp) is created by this script.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import sqlalchemy as sa
from flask_migrate import upgrade

from mobile_api import create_app
from mobile_api.extensions import db
from mobile_api.services import privacy
from mobile_api.services.caller import Caller
from models import utcnow

T = TypeVar("T")

STANDIN = """
CREATE TABLE telemetry_standin (
    id BIGSERIAL PRIMARY KEY,
    device_id VARCHAR(26) NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    name VARCHAR(64) NOT NULL,
    properties JSON NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ix_telemetry_standin_device_id ON telemetry_standin (device_id);
"""

# Devices of accounts 'bench-<run>-<n>' for n in 1..:accounts, :devices each.
SEED_DEVICES = """
INSERT INTO devices (id, installation_id, token_hash, platform, os_version, account_id,
                     promotional_push, location_services, analytics,
                     created_at, updated_at, last_seen_at)
SELECT upper(substr(md5(:run || a || '-' || d), 1, 26)),
       'inst-' || :run || '-' || a || '-' || d,
       md5('t' || :run || a || '-' || d) || md5('u' || :run || a || '-' || d),
       'android', '14', 'bench-' || :run || '-' || a, false, false, false, now(), now(), now()
FROM generate_series(1, :accounts) AS a, generate_series(1, :devices) AS d
"""
SEED_CONSENTS = """
INSERT INTO consent_records (device_id, purpose, granted, source, recorded_at)
SELECT d.id, 'analytics', (g % 2 = 0), 'app', now()
FROM devices d, generate_series(1, :per_device) AS g
WHERE d.account_id LIKE 'bench-' || :run || '-%'
"""
SEED_TELEMETRY = """
INSERT INTO telemetry_standin (device_id, name, properties, received_at)
SELECT d.id, 'app_open', '{"screen": "home"}', now()
FROM devices d, generate_series(1, :per_device) AS g
WHERE d.account_id LIKE 'bench-' || :run || '-%'
"""
SEED_TERMINATIONS = """
INSERT INTO account_terminations (account_id, terminated_at)
SELECT 'bench-' || :run || '-' || a, now() - interval '30 days'
FROM generate_series(1, :accounts) AS a
"""


BENCH = Caller(actor="bench", role="privacy")


def _seed(accounts: int, devices: int, consents: int, telemetry: int, terminate: bool) -> str:
    run = uuid.uuid4().hex[:8]
    params = {"run": run, "accounts": accounts, "devices": devices}
    db.session.execute(sa.text(SEED_DEVICES), params)
    db.session.execute(sa.text(SEED_CONSENTS), {"run": run, "per_device": consents})
    if telemetry:
        db.session.execute(sa.text(SEED_TELEMETRY), {"run": run, "per_device": telemetry})
    if terminate:
        db.session.execute(sa.text(SEED_TERMINATIONS), params)
    db.session.commit()
    db.session.execute(sa.text("ANALYZE"))
    db.session.commit()
    return run


def _timed(action: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def bench_erasure(repeat: int) -> list[float]:
    """Seconds to erase an account with 10 devices and 100,000 telemetry rows."""
    times = []
    for _ in range(repeat):
        run = _seed(1, 10, 10, 10_000, terminate=False)
        held = db.session.scalar(sa.text("SELECT count(*) FROM telemetry_standin"))
        assert held == 100_000, held
        elapsed, _ = _timed(
            lambda run=run: privacy.erase_account(
                db.session, f"bench-{run}-1", BENCH, reason="user_request"
            )
        )
        times.append(elapsed)
        left = db.session.scalar(sa.text("SELECT count(*) FROM telemetry_standin"))
        assert left == 0, left
    return times


def bench_purge(repeat: int) -> list[float]:
    """Seconds for one purge run over 10,000 due accounts."""
    times = []
    for _ in range(repeat):
        _seed(10_000, 1, 10, 0, terminate=True)
        elapsed, result = _timed(
            lambda: privacy.purge(
                db.session, now=utcnow() + timedelta(seconds=1), purge_after_days=14
            )
        )
        times.append(elapsed)
        assert result.accounts == 10_000, result
    return times


def main() -> None:
    """Create a scratch database, run both benchmarks, print medians, drop it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = sa.make_url(args.postgres)
    name = f"mobile_api_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        app = create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "bench",
                "SQLALCHEMY_DATABASE_URI": base.set(database=name).render_as_string(False),
                "LOG_LEVEL": "WARNING",
            }
        )
        with app.app_context():
            upgrade()
            db.session.execute(sa.text(STANDIN))
            db.session.commit()
            erasure = bench_erasure(args.repeat)
            purge = bench_purge((args.repeat + 1) // 2)
            db.session.remove()
            db.engine.dispose()
        print(
            f"erase account (10 devices, 100,000 telemetry rows): median "
            f"{statistics.median(erasure):.3f} s over {len(erasure)} runs "
            f"(min {min(erasure):.3f}, max {max(erasure):.3f})"
        )
        print(
            f"purge run (10,000 due accounts, 1 device each): median "
            f"{statistics.median(purge):.2f} s over {len(purge)} runs "
            f"(min {min(purge):.2f}, max {max(purge):.2f})"
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
