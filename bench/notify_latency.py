"""Benchmark: a notification's latency, POST /v1/notifications to arrival at FCM, during a campaign.

    cd <worktree> && .venv/bin/python -m bench.notify_latency \
        --devices 100000 --rate 50 --seconds 20 --mode embedded|celery

A promotional campaign to `--devices` devices is sent first; once it is sending,
notifications are posted at `--rate` per second (open loop: each at its own moment,
whatever the earlier ones are doing) for `--seconds`, each to one helpdesk account
with one device, each with its own Idempotency-Key. Latency: from just before the
POST to the moment the loopback FCM server receives that message. The web app is
gunicorn as gunicorn.conf.py sets it up (WEB_CONCURRENCY, GUNICORN_THREADS); the
dispatcher is one `flask --app wsgi dispatch worker` (embedded) or two Celery
workers, one per queue (celery). The FCM server runs in
this process. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from email.message import Message
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from bench.dispatch import REDIS_URL, ROOT, _database, seed
from tests.fakes.fcm_server import FakeFcmServer, write_service_account

ACCOUNTS = 200  # helpdesk accounts with one device each, token note-<i>


class TimingFcmServer(FakeFcmServer):
    """The loopback FCM server, noting when each notification's message arrives."""

    def __init__(self) -> None:
        super().__init__(record=False)
        self.arrivals: dict[str, float] = {}
        self.campaign_messages = 0

    def _answer(
        self, project: str, token: str, body: dict[str, Any], headers: Message
    ) -> tuple[str, str | None]:
        if token.startswith("note-"):
            self.arrivals[body["message"]["data"]["bench_id"]] = time.perf_counter()
        else:
            self.campaign_messages += 1  # a race between threads only blurs this count
        return super()._answer(project, token, body, headers)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _seed_helpdesk(engine: sa.Engine) -> None:
    """ACCOUNTS devices, one per account acct-<i>, with push tokens note-<i>."""
    now = sa.func.now() if engine.dialect.name == "postgresql" else sa.func.datetime("now")
    with engine.begin() as conn:
        for i in range(ACCOUNTS):
            conn.execute(
                sa.text(
                    "INSERT INTO devices (id, installation_id, token_hash, platform, os_version,"
                    " push_token, push_token_hash, push_permission, account_id,"
                    " promotional_push, location_services, analytics,"
                    " created_at, updated_at, last_seen_at)"
                    " VALUES (:id, :inst, :th, 'android', '14', :tok, :pth, 'granted', :acct,"
                    " false, false, false, :now, :now, :now)"
                ),
                {
                    "id": f"Z{i:025d}",
                    "inst": f"helpdesk-{i}",
                    "th": f"h{i:063d}",
                    "tok": f"note-{i}",
                    "pth": f"n{i:063d}",
                    "acct": f"acct-{i}",
                    "now": conn.execute(sa.select(now)).scalar(),
                },
            )


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    """Seed, start the campaign, post notifications at the rate, measure; print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--devices", type=int, default=100_000, help="0: no campaign")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mode", choices=["embedded", "celery"], default="embedded")
    args = parser.parse_args()

    url, drop = _database(args.db)
    workdir = Path(tempfile.mkdtemp())
    queue = f"bench-{uuid.uuid4().hex[:10]}"
    fcm = TimingFcmServer().start()
    credentials = write_service_account(workdir / "service-account.json", fcm, "bench-project")
    env = dict(
        os.environ,
        SECRET_KEY="bench",  # noqa: S106 - a throwaway database
        DATABASE_URL=url,
        LOG_LEVEL="WARNING",
        RATELIMIT_ENABLED="false",
        CELERY_QUEUE=queue,
        FCM_CREDENTIALS=str(credentials),
        FCM_ENDPOINT=fcm.url,
    )
    if args.mode == "celery":
        env["CELERY_BROKER_URL"] = REDIS_URL
    os.environ.update(env)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        from flask_migrate import upgrade

        from mobile_api import create_app, tasks
        from mobile_api.extensions import db
        from mobile_api.services import campaigns, categories, keys
        from mobile_api.services.caller import Caller

        caller = Caller(actor="bench", role="admin")
        app = create_app()
        with app.app_context():
            upgrade()
            seed(db.engine, args.devices)
            _seed_helpdesk(db.engine)
            categories.put(
                db.session,
                "ticket_reply",
                {
                    "name": "Ticket replies",
                    "kind": "transactional",
                    "default_enabled": True,
                    "android_channel_id": "tickets",
                    "ios_interruption_level": "time-sensitive",
                },
                caller,
            )
            _, secret = keys.create(db.session, "notify", "bench helpdesk")
            campaign_id = campaigns.create(
                db.session,
                {"name": "bench", "category": "promotional", "title": "t", "body": "b"},
                caller,
            ).id

        port = _free_port()
        web = [
            "gunicorn",
            "--config",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "wsgi:app",
        ]
        if args.mode == "celery":
            worker = ["celery", "--app", "wsgi.celery", "worker", "-c", "1", "-l", "warning"]
            worker += ["--without-gossip", "--without-mingle"]
            dispatchers = [
                [*worker, "-Q", queue, "-n", "campaigns@%h"],
                [*worker, "-Q", tasks.notification_queue(app), "-n", "notifications@%h"],
            ]
        else:
            dispatchers = [["flask", "--app", "wsgi", "dispatch", "worker"]]
        for command in (web, *dispatchers):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", *command],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/healthz", 60)
        time.sleep(3 if args.mode == "celery" else 1.5)  # let the dispatchers start

        if args.devices:
            with app.app_context():
                campaigns.send(db.session, campaign_id, caller)
                tasks.notify_queued(app, campaign_id)
        while args.devices and fcm.campaign_messages < 1000:  # the campaign is sending
            time.sleep(0.05)
        sending_from = fcm.campaign_messages

        session = threading.local()
        posted: dict[str, float] = {}
        statuses: dict[str, int] = {}
        answered: dict[str, float] = {}

        def post(i: int, at: float) -> None:
            time.sleep(max(0.0, at - time.perf_counter()))
            http = getattr(session, "http", None) or requests.Session()
            session.http = http
            bench_id = str(i)
            posted[bench_id] = time.perf_counter()
            response = http.post(
                f"{base}/v1/notifications",
                json={
                    "category_key": "ticket_reply",
                    "account_id": f"acct-{i % ACCOUNTS}",
                    "title": "An agent answered",
                    "body": f"Ticket {i} has a reply.",
                    "data": {"bench_id": bench_id},
                },
                headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": bench_id},
                timeout=30,
            )
            statuses[bench_id] = response.status_code
            answered[bench_id] = time.perf_counter()

        total = int(args.rate * args.seconds)
        start = time.perf_counter() + 0.2
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            for future in [pool.submit(post, i, start + i / args.rate) for i in range(total)]:
                future.result()
        deadline = time.monotonic() + 30
        while len(fcm.arrivals) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        campaign_during = fcm.campaign_messages - sending_from
        with app.app_context():
            status = db.session.scalar(
                sa.text("SELECT status FROM campaigns WHERE id = :id"), {"id": campaign_id}
            )
        latencies = [
            (fcm.arrivals[key] - posted[key]) * 1000 for key in posted if key in fcm.arrivals
        ]
        answers = [(answered[key] - posted[key]) * 1000 for key in answered]
        print(
            json.dumps(
                {
                    "db": args.db,
                    "mode": args.mode,
                    "campaign_devices": args.devices,
                    "rate_per_s": args.rate,
                    "notifications": total,
                    "accepted_202": sum(1 for s in statuses.values() if s == 202),
                    "arrived": len(latencies),
                    "p50_ms": round(statistics.median(latencies)),
                    "p99_ms": round(_percentile(latencies, 0.99)),
                    "max_ms": round(max(latencies)),
                    "post_p50_ms": round(statistics.median(answers)),
                    "post_p99_ms": round(_percentile(answers, 0.99)),
                    "campaign_messages_during_window": campaign_during,
                    "campaign_status_after_window": status,
                }
            ),
            flush=True,
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        fcm.stop()
        drop()
        if args.mode == "celery":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{queue}:*"):
                client.delete(key)


if __name__ == "__main__":
    main()
