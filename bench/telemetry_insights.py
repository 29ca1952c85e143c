"""Insights latency: GET /v1/insights/devices over 1,000,000 devices and 10,000,000 events.

Run from the repository root:

    /work/main/.venv/bin/python bench/telemetry_insights.py \\
        --devices 1000000 --events 10000000 --runs 7

Seeds a scratch PostgreSQL database with generate_series SQL (a realistic spread
of platforms and versions with a long tail of tiny groups that must be folded,
1 % disabled devices, 1,000 terminated accounts, 300,000 version changes), runs
VACUUM ANALYZE, then times the endpoint through the app (auth, query, folding,
serialisation) --runs times after one warm-up call, and prints the medians and
the plan of the device aggregate.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sqlalchemy as sa
from telemetry_common import migrated_app, scratch_database

from mobile_api.extensions import db
from mobile_api.services import insights
from mobile_api.services import keys as key_service

SEED_DEVICES = """
INSERT INTO devices (id, installation_id, token_hash, platform, os_version, device_model,
    app_version, locale, timezone, push_token, push_token_hash, push_permission,
    location_permission, account_id, promotional_push, location_services, analytics,
    disabled_at, created_at, updated_at, last_seen_at)
SELECT lpad(g::text, 26, '0'), 'bench-install-' || g, md5(g::text) || md5('t' || g),
    CASE WHEN g % 5 < 3 THEN 'android' ELSE 'ios' END,
    CASE WHEN g % 100000 = 1 THEN 'rare.' || g
         WHEN g % 5 < 3 THEN (10 + g % 5)::text ELSE '17.' || (g % 7) END,
    'Model ' || (g % 40),
    CASE WHEN g % 50000 = 2 THEN 'beta.' || g WHEN g % 97 = 0 THEN NULL
         ELSE '5.' || (g % 12) || '.0' END,
    'id-ID', 'Asia/Jakarta', repeat('x', 150) || g, md5('p' || g) || md5('q' || g),
    (ARRAY['granted', 'provisional', 'denied', 'not_determined'])[1 + g % 4],
    (ARRAY['precise', 'approximate', 'denied', 'not_determined'])[1 + g % 4],
    CASE WHEN g % 2 = 0 THEN 'acct-' || (g / 2) END,
    g % 3 = 0, g % 4 = 0, g % 2 = 0,
    CASE WHEN g % 100 = 0 THEN now() END,
    now() - interval '200 days', now(),
    now() - (g % 60) * interval '1 day' - (g % 1440) * interval '1 minute'
FROM generate_series(1, :devices) AS g
"""
SEED_TERMINATIONS = """
INSERT INTO account_terminations (account_id, terminated_at)
SELECT 'acct-' || (g * 7), now() - interval '1 day' FROM generate_series(1, 1000) AS g
"""
SEED_EVENTS = """
INSERT INTO telemetry_events (device_id, event_id, name, occurred_at, received_at, properties)
SELECT lpad((1 + g % :devices)::text, 26, '0'), 'e' || g,
    (ARRAY['app_open', 'screen_view', 'ticket_created', 'search'])[1 + g % 4],
    now() - (g % 89) * interval '1 day', now() - (g % 89) * interval '1 day',
    '{"screen": "tickets", "position": 3}'::json
FROM generate_series(1, :events) AS g
"""
SEED_CHANGES = """
INSERT INTO device_version_changes (device_id, field, old_value, new_value, changed_at)
SELECT lpad((1 + (g::bigint * 7919) % :devices)::text, 26, '0'),
    CASE WHEN g % 3 = 0 THEN 'os_version' ELSE 'app_version' END, '5.1.0', '5.2.0',
    now() - (g % 60) * interval '1 day'
FROM generate_series(1, 300000) AS g
"""


def _seed(url: str, devices: int, events: int) -> None:
    engine = sa.create_engine(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        # Seeding only: skip the per-row foreign-key triggers (the ids are correct by
        # construction) and build the events' secondary indexes after the load.
        conn.execute(sa.text("SET session_replication_role = replica"))
        conn.execute(sa.text("DROP INDEX uq_telemetry_events_device_id_event_id"))
        conn.execute(sa.text("DROP INDEX ix_telemetry_events_received_at"))
        conn.execute(sa.text(SEED_DEVICES), {"devices": devices})
        conn.execute(sa.text(SEED_TERMINATIONS))
        conn.execute(sa.text(SEED_CHANGES), {"devices": devices})
        conn.execute(sa.text(SEED_EVENTS), {"devices": devices, "events": events})
        conn.execute(
            sa.text(
                "CREATE UNIQUE INDEX uq_telemetry_events_device_id_event_id"
                " ON telemetry_events (device_id, event_id)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE INDEX ix_telemetry_events_received_at ON telemetry_events (received_at)"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    print(
        f"seeded {devices:,} devices and {events:,} events in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    engine.dispose()


def main() -> None:
    """Seed, then time the endpoint; print every run and the median."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with scratch_database("mobile_api_bench_insights") as url:
        app = migrated_app(url)
        _seed(url, args.devices, args.events)
        with app.app_context():
            _, secret = key_service.create(db.session, "marketing", "bench")
            db.session.remove()
        client = app.test_client()
        headers = {"Authorization": f"Bearer {secret}"}
        warm = client.get("/v1/insights/devices", headers=headers)
        assert warm.status_code == 200, warm.get_json()
        timings = []
        for run in range(args.runs):
            started = time.perf_counter()
            response = client.get("/v1/insights/devices", headers=headers)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
            print(f"run {run + 1}: {timings[-1] * 1000:.0f} ms", flush=True)
        body = response.get_json()
        print(
            f"active devices {body['active_devices']:,}; os groups shown "
            f"{len(body['by_os_version'])}; other {body['by_os_version'][-1]}"
        )
        print(
            f"median: {statistics.median(timings) * 1000:.0f} ms over {args.runs} runs "
            f"({args.devices:,} devices, {args.events:,} events)"
        )
        with app.app_context():
            stmt = insights.device_aggregate_statement(insights.utcnow())
            compiled = stmt.compile(db.engine, compile_kwargs={"literal_binds": True})
            plan = db.session.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}"))
            print("\n".join(row[0] for row in plan))
            db.session.remove()
            db.engine.dispose()


if __name__ == "__main__":
    main()
