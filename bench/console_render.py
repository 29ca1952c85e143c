"""Benchmark the staff console's server-side render time on PostgreSQL at scale.

Run from the worktree root:

    .venv/bin/python -m bench.console_render \
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test --requests 200

It seeds (once: later runs keep what the database `console_bench` holds, unless --reseed) 1,000,000
devices, 1,000,000 audit events, 3 consent records for each of the first 100,000
devices, and one campaign per status of interest with a delivery for each of
--campaign-devices devices; then times, in process through Flask's test client with a
signed-in admin session, the whole request (session check, queries, template):
device search (by installation id, account id, platform), the device page, the audit
trail filtered by actor, action and target, and the campaign page (a completed
campaign, whose counts are stored, and one still sending, whose counts are kept as its
deliveries are decided: seeded here from its rows, as the dispatcher would have kept them).
Prints p50/p95/max per page in milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import sqlalchemy as sa
from flask import Flask
from flask_migrate import upgrade

from mobile_api import create_app
from mobile_api.extensions import db
from tests.console_fixtures import enrol, sign_in

DATABASE = "console_bench"

SEED_DEVICES = """
INSERT INTO devices (id, installation_id, token_hash, platform, os_version, device_model,
                     app_version, locale, push_token, push_token_hash, push_permission,
                     account_id, promotional_push, location_services, analytics,
                     created_at, updated_at, last_seen_at)
SELECT 'D' || lpad(i::text, 25, '0'),
       'inst-' || i,
       md5('t' || i) || md5('u' || i),
       CASE WHEN i % 3 = 0 THEN 'ios' ELSE 'android' END,
       (10 + i % 8)::text, 'Pixel ' || (i % 9), '5.' || (i % 4) || '.0', 'id-ID',
       'tok-' || md5('p' || i) || md5('q' || i), md5('p' || i) || md5('q' || i), 'granted',
       'acct-' || (i / 3), i % 2 = 0, false, i % 5 = 0,
       now() - (i % 90) * interval '1 day', now(), now() - (i % 60) * interval '1 day'
FROM generate_series(1, :n) AS i
"""
SEED_CONSENTS = """
INSERT INTO consent_records (device_id, purpose, granted, source, recorded_at)
SELECT 'D' || lpad(i::text, 25, '0'), p, true, 'app', now() - interval '1 day'
FROM generate_series(1, :n) AS i,
     unnest(ARRAY['promotional_push', 'analytics', 'os_push_permission']) AS p
"""
ACTORS = (
    ["system", "cli"]
    + [f"key:K{i:025d}" for i in range(20)]
    + [f"staff:person{i}@example.com" for i in range(50)]
)
ACTIONS = [
    "device.disabled",
    "device.enabled",
    "device.exported",
    "account.purged",
    "campaign.send",
    "key.created",
    "staff.signed_in",
    "device.erased",
]
SEED_AUDIT = """
INSERT INTO audit_events (recorded_at, actor, action, target, request_id, details,
                          prev_hash, hash)
SELECT now() - (:n - i) * interval '1 second',
       (:actors)[1 + (i::bigint * 7919) % array_length(:actors, 1)],
       (:actions)[1 + (i::bigint * 104729) % array_length(:actions, 1)],
       md5('target' || (i % 200000)) || md5('t2' || (i % 200000)),
       md5('r' || i), '{}', md5('p' || i) || md5('p2' || i), md5('h' || i) || md5('h2' || i)
FROM generate_series(1, :n) AS i
"""
SEED_CAMPAIGN = """
INSERT INTO campaigns (id, name, category, title, body, data, audience, priority, status,
                       created_by, created_at, enumeration_done, targeted, final_sent,
                       final_failed, final_invalid_tokens_pruned, final_suppressed)
VALUES (:id, :name, 'promotional', 'Hello', 'Body', '{}', '{}', 'normal', :status,
        'staff:bench@example.com', now(), true, :n, :final_sent, :final_failed, :pruned,
        CAST(:final_suppressed AS JSON))
ON CONFLICT (id) DO NOTHING
"""
SEED_DELIVERIES = """
INSERT INTO campaign_deliveries (campaign_id, device_id, status, reason, attempts,
                                 next_attempt_at, updated_at)
SELECT :campaign, 'D' || lpad(i::text, 25, '0'),
       CASE WHEN i % 2 = 1 THEN 'suppressed' WHEN i % 10 = 0 AND :pending THEN 'pending'
            ELSE 'sent' END,
       CASE WHEN i % 2 = 1 THEN 'promotional_opt_out' END, 1, now(), now()
FROM generate_series(1, :n) AS i
"""
# The counts the dispatcher keeps beside the rows it decides (pending: pending or sending).
SEED_COUNTS = """
INSERT INTO campaign_delivery_counts (campaign_id, status, reason, n)
SELECT campaign_id, status, reason, count(*)
FROM (SELECT campaign_id,
             CASE WHEN status IN ('pending', 'sending') THEN 'pending' ELSE status END AS status,
             CASE WHEN status IN ('pending', 'sending') THEN '' ELSE coalesce(reason, '') END
                 AS reason
      FROM campaign_deliveries WHERE campaign_id = :campaign) AS rows
GROUP BY campaign_id, status, reason
"""


def _server_url(postgres: str, database: str) -> str:
    return sa.make_url(postgres).set(database=database).render_as_string(hide_password=False)


def _ensure_database(postgres: str, reseed: bool) -> bool:
    """Create the bench database if missing (or anew); True when it must be seeded."""
    admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DATABASE}
        )
        if exists and reseed:
            conn.execute(sa.text(f'DROP DATABASE "{DATABASE}" WITH (FORCE)'))
            exists = None
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    return not exists


def _timed(label: str, step: Callable[[], object], table: str) -> None:
    # A table seeded by an earlier, interrupted run is kept.
    if db.session.scalar(sa.text(f"SELECT EXISTS (SELECT 1 FROM {table})")):
        print(f"  kept {table} from an earlier run", flush=True)
        return
    started = time.perf_counter()
    step()
    print(f"  seeded {label} in {time.perf_counter() - started:.1f} s", flush=True)


def _seed(app: Flask, devices: int, events: int, campaign_devices: int) -> None:
    with app.app_context():
        upgrade()
        session = db.session
        _timed(
            f"{devices:,} devices",
            lambda: session.execute(sa.text(SEED_DEVICES), {"n": devices}),
            "devices",
        )
        session.commit()
        consenting = min(devices, 100_000)
        _timed(
            f"{3 * consenting:,} consent records",
            lambda: session.execute(sa.text(SEED_CONSENTS), {"n": consenting}),
            "consent_records",
        )
        session.commit()
        audit = sa.text(SEED_AUDIT).bindparams(
            sa.bindparam("actors", type_=sa.ARRAY(sa.String())),
            sa.bindparam("actions", type_=sa.ARRAY(sa.String())),
        )
        _timed(
            f"{events:,} audit events",
            lambda: session.execute(audit, {"n": events, "actors": ACTORS, "actions": ACTIONS}),
            "audit_events",
        )
        session.commit()
        half = campaign_devices // 2
        for campaign_id, status, pending in (
            ("CCOMPLETED0000000000000000", "completed", False),
            ("CSENDING000000000000000000", "sending", True),
        ):
            session.execute(
                sa.text(SEED_CAMPAIGN),
                {
                    "id": campaign_id,
                    "name": f"bench {status}",
                    "status": status,
                    "n": campaign_devices,
                    "final_sent": None if pending else campaign_devices - half,
                    "final_failed": None if pending else 0,
                    "pruned": None if pending else 0,
                    "final_suppressed": None if pending else f'{{"promotional_opt_out": {half}}}',
                },
            )
            _timed(
                f"{campaign_devices:,} deliveries of the {status} campaign",
                lambda c=campaign_id, p=pending: session.execute(
                    sa.text(SEED_DELIVERIES), {"campaign": c, "n": campaign_devices, "pending": p}
                ),
                f"campaign_deliveries WHERE campaign_id = '{campaign_id}'",
            )
            session.commit()
            _timed(
                f"the {status} campaign's counts",
                lambda c=campaign_id: session.execute(sa.text(SEED_COUNTS), {"campaign": c}),
                f"campaign_delivery_counts WHERE campaign_id = '{campaign_id}'",
            )
            session.commit()
        session.execute(sa.text("ANALYZE"))
        session.commit()


def _measure(app: Flask, pages: dict[str, Callable[[int], str]], requests: int) -> None:
    with app.app_context():
        db.session.execute(sa.text("DELETE FROM staff_members"))
        db.session.commit()
    client = app.test_client()
    sign_in(client, enrol(app, "bench-admin@example.com", "admin"))
    print(f"{'page':<34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, url in pages.items():
        for i in range(5):  # warm the plan cache and the pool
            client.get(url(i))
        timings = []
        for i in range(requests):
            started = time.perf_counter()
            response = client.get(url(i))
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        timings.sort()
        p95 = timings[int(0.95 * len(timings)) - 1]
        print(
            f"{name:<34} {statistics.median(timings):8.1f} {p95:8.1f} {timings[-1]:8.1f}",
            flush=True,
        )


def main() -> None:
    """Seed once, then time each console page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--campaign-devices", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--reseed", action="store_true")
    args = parser.parse_args()

    fresh = _ensure_database(args.postgres, args.reseed)
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "bench",
            "SQLALCHEMY_DATABASE_URI": _server_url(args.postgres, DATABASE),
            "RATELIMIT_ENABLED": False,
            "LOG_LEVEL": "WARNING",
        }
    )
    del fresh  # every table is seeded unless it has rows already
    _seed(app, args.devices, args.events, args.campaign_devices)
    rng = random.Random(7)
    n = args.devices

    def device_id(_i: int) -> str:
        return "D" + str(rng.randint(1, min(n, 100_000))).zfill(25)

    pages: dict[str, Callable[[int], str]] = {
        "device search: installation id": lambda _i: (
            f"/console/devices?installation_id=inst-{rng.randint(1, n)}"
        ),
        "device search: account id": lambda _i: (
            f"/console/devices?account_id=acct-{rng.randint(1, n // 3)}"
        ),
        "device search: platform (page 1)": lambda i: (
            f"/console/devices?platform={'ios' if i % 2 else 'android'}"
        ),
        "device page": lambda i: f"/console/devices/{device_id(i)}",
        "audit: no filter": lambda _i: "/console/audit",
        "audit: actor (1 of 72)": lambda _i: f"/console/audit?actor={rng.choice(ACTORS)}",
        "audit: action (1 of 8)": lambda _i: f"/console/audit?action={rng.choice(ACTIONS)}",
        "audit: actor and action": lambda _i: (
            f"/console/audit?actor={rng.choice(ACTORS)}&action={rng.choice(ACTIONS)}"
        ),
        "audit: target": lambda _i: "/console/audit?target=" + _target(rng.randint(0, 199_999)),
        "campaign page: completed": lambda _i: "/console/campaigns/CCOMPLETED0000000000000000",
        "campaign page: sending": lambda _i: "/console/campaigns/CSENDING000000000000000000",
        "campaign page: deliveries filter": lambda _i: (
            "/console/campaigns/CCOMPLETED0000000000000000?status=suppressed"
        ),
        "campaign list": lambda _i: "/console/campaigns",
    }
    _measure(app, pages, args.requests)


def _target(i: int) -> str:
    import hashlib

    return (
        hashlib.md5(f"target{i}".encode()).hexdigest()  # noqa: S324 - matches the seed's md5
        + hashlib.md5(f"t2{i}".encode()).hexdigest()  # noqa: S324
    )


if __name__ == "__main__":
    main()
