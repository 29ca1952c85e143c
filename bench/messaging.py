"""Benchmarks of v1.1 messaging: the cost of the hand-off gates, and planning local-time waves.

    cd <worktree> && .venv/bin/python -m bench.messaging gates --db sqlite --devices 10000 --runs 3
    .venv/bin/python -m bench.messaging plan --devices 200000

`gates`: one database seeded once; campaigns to every device sent alternately with
QUIET_HOURS and PROMO_FREQUENCY_CAP unset ("off") and set ("on": quiet hours that
do not cover now, caps no device reaches, so the same messages go out and only the
checks differ). The embedded dispatcher runs in this process and sends through
firebase-admin to the loopback FCM server (its own process). Prints messages/s per
run and the medians.

`plan`: PostgreSQL; devices spread over 40 timezones (1 in 20 without one); one
`local_time` campaign sent and its audience enumerated into waves by the dispatcher's
own `enumerate_batch`, in this process. Prints the time to plan, the number of
distinct due times, and this process's peak RSS (ru_maxrss) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.dispatch import _database, _fake_fcm, seed

ZONES = [
    "Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles", "America/Denver",
    "America/Chicago", "America/New_York", "America/Halifax", "America/Sao_Paulo",
    "America/Argentina/Buenos_Aires", "Atlantic/Azores", "Europe/London", "Europe/Paris",
    "Europe/Berlin", "Europe/Athens", "Africa/Cairo", "Africa/Johannesburg", "Africa/Lagos",
    "Africa/Nairobi", "Europe/Moscow", "Asia/Dubai", "Asia/Tehran", "Asia/Karachi",
    "Asia/Kolkata", "Asia/Kathmandu", "Asia/Dhaka", "Asia/Yangon", "Asia/Bangkok",
    "Asia/Jakarta", "Asia/Singapore", "Asia/Shanghai", "Asia/Manila", "Asia/Tokyo",
    "Asia/Seoul", "Australia/Adelaide", "Australia/Sydney", "Pacific/Noumea",
    "Pacific/Auckland", "Pacific/Chatham", "Pacific/Tongatapu", "Pacific/Kiritimati",
]  # fmt: skip


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _app(url: str, **env: str) -> Any:
    os.environ.update(
        SECRET_KEY="bench",  # noqa: S106 - a throwaway database
        DATABASE_URL=url,
        LOG_LEVEL="WARNING",
        RATELIMIT_ENABLED="false",
        **env,
    )
    from mobile_api import create_app

    return create_app()


def _create(app: Any, **fields: Any) -> str:
    from mobile_api.extensions import db
    from mobile_api.services import campaigns
    from mobile_api.services.caller import Caller

    body = {"name": "bench", "category": "promotional", "title": "t", "body": "b", **fields}
    with app.app_context():
        campaign = campaigns.create(db.session, body, Caller(actor="bench", role="admin"))
        campaigns.send(db.session, campaign.id, Caller(actor="bench", role="admin"))
        return campaign.id


def gates(args: argparse.Namespace) -> dict[str, Any]:
    """Messages/s with the gates off and on, alternating runs on one database."""
    from flask_migrate import upgrade

    from mobile_api.extensions import db
    from mobile_api.worker import Worker

    url, drop = _database(args.db)
    server, endpoint, credentials = _fake_fcm(Path(tempfile.mkdtemp()))
    try:
        env = {"FCM_CREDENTIALS": str(credentials), "FCM_ENDPOINT": endpoint}
        app = _app(url, **env)
        with app.app_context():
            upgrade()
            seed(db.engine, args.devices)
        runs: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.runs):
            for label in ("off", "on"):
                app.config["QUIET_HOURS"] = "03:00-03:01" if label == "on" else None
                app.config["PROMO_FREQUENCY_CAP"] = "1000/1d,5000/7d" if label == "on" else None
                campaign_id = _create(app)
                started = time.perf_counter()
                Worker(app).run(drain=True)
                elapsed = time.perf_counter() - started
                with app.app_context():
                    handed = db.session.scalar(
                        sa.text(
                            "SELECT count(*) FROM campaign_deliveries WHERE campaign_id = :id"
                            " AND status IN ('sent', 'failed')"
                        ),
                        {"id": campaign_id},
                    )
                    db.session.remove()
                runs[label].append(handed / elapsed)
        off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
        return {
            "bench": "gates",
            "db": args.db,
            "devices": args.devices,
            "runs_off": [round(r) for r in runs["off"]],
            "runs_on": [round(r) for r in runs["on"]],
            "median_off_per_s": round(off),
            "median_on_per_s": round(on),
            "cost_percent": round(100 * (off - on) / off, 1),
        }
    finally:
        server.terminate()
        drop()


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Time and memory to enumerate a local_time campaign over many devices and zones."""
    from flask_migrate import upgrade

    from mobile_api.extensions import db
    from mobile_api.services import dispatch

    url, drop = _database("postgresql")
    try:
        app = _app(url)
        with app.app_context():
            upgrade()
            t0 = time.perf_counter()
            seed(db.engine, args.devices)
            zones = "ARRAY[" + ", ".join(f"'{zone}'" for zone in ZONES) + "]"
            with db.engine.begin() as conn:
                conn.execute(
                    sa.text(
                        f"UPDATE devices SET timezone = CASE WHEN substr(id, 20)::int % 20 = 7"
                        f" THEN NULL ELSE ({zones})[substr(id, 20)::int % 40 + 1] END"
                    )
                )
                conn.execute(sa.text("ANALYZE devices"))
            seeded = time.perf_counter() - t0
            db.session.remove()
        campaign_id = _create(app, local_time="09:00", fallback_timezone="UTC")
        rss_before = _peak_rss_mb()
        with app.app_context():
            settings = dispatch.Settings.from_config(app.config)
            t0 = time.perf_counter()
            batches = 0
            while True:
                batch = dispatch.enumerate_batch(db.session, campaign_id, settings)
                batches += 1
                if batch is None or batch.done:
                    break
            planned = time.perf_counter() - t0
            waves = db.session.scalar(
                sa.text(
                    "SELECT count(DISTINCT due_at) FROM campaign_deliveries WHERE campaign_id = :id"
                ),
                {"id": campaign_id},
            )
            targeted = db.session.scalar(
                sa.text("SELECT targeted FROM campaigns WHERE id = :id"), {"id": campaign_id}
            )
            db.session.remove()
        return {
            "bench": "plan",
            "devices": args.devices,
            "targeted": targeted,
            "waves": waves,
            "batches": batches,
            "seed_s": round(seeded, 1),
            "plan_s": round(planned, 1),
            "devices_per_s": round(args.devices / planned),
            "peak_rss_before_mb": round(rss_before),
            "peak_rss_after_mb": round(_peak_rss_mb()),
        }
    finally:
        drop()


def main() -> None:
    """Run one benchmark; print one JSON line."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="bench", required=True)
    one = sub.add_parser("gates")
    one.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    one.add_argument("--devices", type=int, default=10_000)
    one.add_argument("--runs", type=int, default=3)
    two = sub.add_parser("plan")
    two.add_argument("--devices", type=int, default=200_000)
    args = parser.parse_args()
    result = gates(args) if args.bench == "gates" else plan(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
