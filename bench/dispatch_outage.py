"""Benchmark: a campaign through a real-time FCM outage (default: 5 minutes), nothing lost.

    cd <worktree> && .venv/bin/python -m bench.dispatch_outage \
        --db postgresql --devices 20000 --outage-after 3 --outage-seconds 300

The loopback FCM server (its own process) answers every send UNAVAILABLE from
`--outage-after` seconds after it starts, for `--outage-seconds`; one embedded
dispatcher (`flask --app wsgi dispatch worker`, default settings) sends a campaign
through it. Prints one JSON line: every eligible device's message accepted, how many
requests reached FCM during the outage (the circuit breaker's probes, not the whole
audience retrying), and how long after the outage's end the campaign completed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.dispatch import ROOT, _database, _fake_fcm, seed


def _stats(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/stats", timeout=5) as response:  # noqa: S310
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def main() -> None:
    """Seed, start the outage, send, watch; print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--outage-after", type=float, default=3.0)
    parser.add_argument("--outage-seconds", type=float, default=300.0)
    parser.add_argument("--kind", default="unavailable")
    args = parser.parse_args()

    url, drop = _database(args.db)
    workdir = Path(tempfile.mkdtemp())
    env = dict(
        os.environ,
        SECRET_KEY="bench",  # noqa: S106 - a throwaway database
        DATABASE_URL=url,
        LOG_LEVEL="WARNING",
        RATELIMIT_ENABLED="false",
        CELERY_QUEUE=f"bench-{uuid.uuid4().hex[:10]}",
    )
    env.pop("CELERY_BROKER_URL", None)
    os.environ.update(env)
    server = worker = None
    try:
        from flask_migrate import upgrade

        from mobile_api import create_app
        from mobile_api.extensions import db
        from mobile_api.services import campaigns

        app = create_app()
        with app.app_context():
            upgrade()
            seed(db.engine, args.devices)
            campaign_id = campaigns.create(
                db.session,
                {"name": "outage", "category": "promotional", "title": "t", "body": "b"},
                actor="bench",
                is_admin=True,
            ).id
            eligible = campaigns.preview(
                db.session, db.session.get(campaigns.Campaign, campaign_id)
            )["eligible"]
        outage = (
            "--outage-after",
            str(args.outage_after),
            "--outage-seconds",
            str(args.outage_seconds),
            "--outage-kind",
            args.kind,
        )
        server, endpoint, credentials = _fake_fcm(workdir, outage)
        server_started = time.monotonic()
        env.update(FCM_CREDENTIALS=str(credentials), FCM_ENDPOINT=endpoint)
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "dispatch", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        outage_start = server_started + args.outage_after
        outage_end = outage_start + args.outage_seconds
        time.sleep(max(0.0, outage_start - time.monotonic()))
        with app.app_context():
            campaigns.send(db.session, campaign_id, actor="bench", is_admin=True)
        at_start = _stats(endpoint)
        at_end: dict[str, Any] | None = None
        completed_at = None
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            while completed_at is None:
                now = time.monotonic()
                if at_end is None and now >= outage_end:
                    at_end = _stats(endpoint)
                status = conn.execute(
                    sa.text("SELECT status FROM campaigns WHERE id = :id"), {"id": campaign_id}
                ).scalar()
                conn.rollback()
                if status in ("completed", "failed"):
                    completed_at = now
                time.sleep(0.5)
        engine.dispose()
        final = _stats(endpoint)
        with app.app_context():
            counts = campaigns.counts(db.session, db.session.get(campaigns.Campaign, campaign_id))
        during = (at_end or final)["requests"] - at_start["requests"]
        print(
            json.dumps(
                {
                    "db": args.db,
                    "devices": args.devices,
                    "eligible": eligible,
                    "outage_s": args.outage_seconds,
                    "kind": args.kind,
                    "status": status,
                    "sent": counts["sent"],
                    "failed": counts["failed"],
                    "accepted_by_fcm": final["accepted"],
                    "requests_during_outage": during,
                    "requests_per_s_during_outage": round(during / args.outage_seconds, 2),
                    "completed_after_outage_end_s": round(completed_at - outage_end, 1),
                }
            ),
            flush=True,
        )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        if server is not None:
            server.terminate()
        drop()


if __name__ == "__main__":
    main()
