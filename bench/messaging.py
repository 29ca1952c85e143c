"""Benchmarks of v1.1 messaging: the cost of the hand-off gates, and planning local-time waves.

    cd <worktree> && .venv/bin/python -m bench.messaging gates --db sqlite --devices 10000 --runs 3
    .venv/bin/python -m bench.messaging plan --devices 200000
    .venv/bin/python -m bench.messaging waves --devices 200000 --runs 3

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

`waves`: PostgreSQL, the same 40 timezones, seeded once. Each run sends a plain
campaign to every device and a `local_time` campaign to the same audience, both
enumerated first (not timed). The plain one is then dispatched at once; the local-time
one wave by wave, the service's clock (models.base.travel_to) moved to each wave's
moment in turn. Messages/s: messages handed over (sent or failed) over the time the
dispatcher's passes took (claim, gates, hand-off to the loopback FCM server in its own
process, record), summed over the waves. The embedded dispatcher's passes run in this
process.
"""

from __future__ import annotations

import argparse
import datetime as dt
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


def _seed_zones(app: Any, devices: int) -> float:
    """Seed `devices` devices spread over ZONES (1 in 20 without a timezone); seconds taken."""
    from flask_migrate import upgrade

    from mobile_api.extensions import db

    with app.app_context():
        upgrade()
        t0 = time.perf_counter()
        seed(db.engine, devices)
        zones = "ARRAY[" + ", ".join(f"'{zone}'" for zone in ZONES) + "]"
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"UPDATE devices SET timezone = CASE WHEN substr(id, 20)::int % 20 = 7"
                    f" THEN NULL ELSE ({zones})[substr(id, 20)::int % 40 + 1] END"
                )
            )
            conn.execute(sa.text("ANALYZE devices"))
        db.session.remove()
        return time.perf_counter() - t0


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Time and memory to enumerate a local_time campaign over many devices and zones."""
    from mobile_api.extensions import db

    url, drop = _database("postgresql")
    try:
        app = _app(url)
        seeded = _seed_zones(app, args.devices)
        campaign_id = _create(app, local_time="09:00", fallback_timezone="UTC")
        rss_before = _peak_rss_mb()
        t0 = time.perf_counter()
        batches = _enumerate(app, campaign_id)
        planned = time.perf_counter() - t0
        with app.app_context():
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


def _enumerate(app: Any, campaign_id: str) -> int:
    """Expand the campaign's audience into delivery rows (its waves); batches taken."""
    from mobile_api.extensions import db
    from mobile_api.services import dispatch

    with app.app_context():
        settings = dispatch.Settings.from_config(app.config)
        batches = 0
        while True:
            batch = dispatch.enumerate_batch(db.session, campaign_id, settings)
            batches += 1
            if batch is None or batch.done:
                break
        db.session.remove()
    return batches


def _dispatch_due(app: Any) -> float:
    """Run the embedded dispatcher's passes until one claims nothing; seconds taken."""
    from mobile_api.worker import Worker

    worker = Worker(app)
    started = time.perf_counter()
    while worker.run_pass()[0]:
        pass
    return time.perf_counter() - started


def _handed(app: Any, campaign_id: str) -> int:
    from mobile_api.extensions import db

    with app.app_context():
        count = db.session.scalar(
            sa.text(
                "SELECT count(*) FROM campaign_deliveries WHERE campaign_id = :id"
                " AND status IN ('sent', 'failed')"
            ),
            {"id": campaign_id},
        )
        db.session.remove()
    return int(count or 0)


def waves(args: argparse.Namespace) -> dict[str, Any]:
    """Dispatch messages/s of a plain send and of local-time waves firing, alternating runs."""
    from mobile_api.extensions import db
    from models.base import travel_to

    url, drop = _database("postgresql")
    server, endpoint, credentials = _fake_fcm(Path(tempfile.mkdtemp()))
    try:
        app = _app(url, FCM_CREDENTIALS=str(credentials), FCM_ENDPOINT=endpoint)
        seeded = _seed_zones(app, args.devices)
        runs: dict[str, list[float]] = {"plain": [], "waves": []}
        wave_count = 0
        for _ in range(args.runs):
            travel_to(None)
            plain = _create(app)
            _enumerate(app, plain)
            elapsed = _dispatch_due(app)
            runs["plain"].append(_handed(app, plain) / elapsed)

            # Planned for tomorrow's 09:00 in every zone, then each wave fired in turn.
            start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
            travel_to(start)
            local = _create(app, local_time="09:00", send_at=start + dt.timedelta(minutes=1))
            _enumerate(app, local)
            with app.app_context():
                moments = db.session.scalars(
                    sa.text(
                        "SELECT DISTINCT due_at FROM campaign_deliveries"
                        " WHERE campaign_id = :id ORDER BY due_at"
                    ),
                    {"id": local},
                ).all()
                db.session.remove()
            wave_count = len(moments)
            elapsed = 0.0
            for moment in moments:
                due = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
                travel_to(due + dt.timedelta(seconds=1))
                elapsed += _dispatch_due(app)
            runs["waves"].append(_handed(app, local) / elapsed)
        travel_to(None)
        plain_median, waves_median = (
            statistics.median(runs["plain"]),
            statistics.median(runs["waves"]),
        )
        return {
            "bench": "waves",
            "devices": args.devices,
            "waves": wave_count,
            "seed_s": round(seeded, 1),
            "runs_plain_per_s": [round(r) for r in runs["plain"]],
            "runs_waves_per_s": [round(r) for r in runs["waves"]],
            "median_plain_per_s": round(plain_median),
            "median_waves_per_s": round(waves_median),
            "waves_vs_plain": round(waves_median / plain_median, 2),
        }
    finally:
        travel_to(None)
        server.terminate()
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
    three = sub.add_parser("waves")
    three.add_argument("--devices", type=int, default=200_000)
    three.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = {"gates": gates, "plan": plan, "waves": waves}[args.bench](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
