"""Benchmark: dispatch of one promotional campaign to the loopback FCM server.

One configuration per run (so peak RSS of the dispatcher processes is that run's):

    cd <worktree> && /work/main/.venv/bin/python -m bench.dispatch \
        --db sqlite|postgresql --devices 100000 --mode embedded|celery --workers 1|2
    /work/main/.venv/bin/python -m bench.dispatch --db postgresql --devices 1000000 --preview-only
    /work/main/.venv/bin/python -m bench.dispatch --db postgresql --devices 20000 --push apns

`--push apns` makes every device an iOS one with an APNs token and sends through the
APNs transport to the loopback APNs server (HTTP/2 over TLS) instead. The JSON line
also gives the dispatchers' and the fake server's CPU per message handed over.

Devices: 30% opted out of promotional pushes, 1% with tokens the server answers
UNREGISTERED, the rest OK. The loopback FCM server runs in its own process; the
dispatchers are real `flask --app wsgi dispatch drain` or `celery --app wsgi.celery
worker -c 1` processes sending through firebase-admin. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
PG_BASE = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

_COLUMNS = (
    "id, installation_id, token_hash, platform, os_version, app_version, locale, push_token,"
    " push_token_hash, push_permission, promotional_push, location_services, analytics,"
    " created_at, updated_at, last_seen_at"
)


def seed(engine: sa.Engine, devices: int) -> None:
    """Insert `devices` devices with bulk SQL (30% opted out, 1% unregistered tokens)."""
    if engine.dialect.name == "postgresql":
        sql = f"""
            INSERT INTO devices ({_COLUMNS})
            SELECT lpad(i::text, 26, '0'), 'bench-' || i, md5(i::text) || md5('t' || i),
                   CASE WHEN i % 2 = 0 THEN 'android' ELSE 'ios' END,
                   (9 + i % 9)::text || '.' || (i % 4)::text, '5.2', 'id-ID',
                   CASE WHEN i % 100 = 5 THEN 'unreg-' ELSE 'tok-' END || i,
                   md5('p' || i) || md5('q' || i), 'granted', i % 10 >= 3, false, false,
                   now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
            FROM generate_series(1, {devices}) AS i
        """
    else:
        sql = f"""
            WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {devices})
            INSERT INTO devices ({_COLUMNS})
            SELECT printf('%026d', i), 'bench-' || i, printf('%064d', i),
                   CASE WHEN i % 2 = 0 THEN 'android' ELSE 'ios' END,
                   (9 + i % 9) || '.' || (i % 4), '5.2', 'id-ID',
                   CASE WHEN i % 100 = 5 THEN 'unreg-' ELSE 'tok-' END || i,
                   printf('p%063d', i), 'granted', i % 10 >= 3, 0, 0,
                   datetime('now', '-1 day'), datetime('now', '-1 day'), datetime('now', '-1 day')
            FROM s
        """
    with engine.begin() as conn:
        conn.execute(sa.text(sql))
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE devices"))


def as_apns(engine: sa.Engine) -> None:
    """Make every seeded device an iOS one with an APNs token (the 1% dead ones start "dead")."""
    if engine.dialect.name == "postgresql":
        # Live tokens start "0", so none begins with a prefix the fake server scripts.
        hexed = "'0' || substr(md5(push_token) || md5('a' || push_token), 2)"
        dead = "'dead' || substr(md5(push_token) || md5('a' || push_token), 5)"
    else:
        number = "CAST(id AS INTEGER)"
        hexed = f"printf('%064x', {number})"
        dead = f"'dead' || printf('%060x', {number})"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE devices SET platform = 'ios', push_provider = 'apns', push_token ="
                f" CASE WHEN push_token LIKE 'unreg-%' THEN {dead} ELSE {hexed} END"
            )
        )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fake_apns(workdir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    port = 20000 + uuid.uuid4().int % 20000
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.apns_server",
            "--port",
            str(port),
            "--dir",
            str(workdir / "apns"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    settings = json.loads(server.stdout.readline())
    return server, {key: str(value) for key, value in settings.items()}


def _database(kind: str) -> tuple[str, Any]:
    if kind == "sqlite":
        path = Path(tempfile.mkdtemp()) / "bench.sqlite3"
        return f"sqlite:///{path}", lambda: path.unlink(missing_ok=True)
    name = f"bench_dispatch_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return sa.make_url(PG_BASE).set(database=name).render_as_string(hide_password=False), drop


def _fake_fcm(
    workdir: Path, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], str, Path]:
    credentials = workdir / "service-account.json"
    port = 20000 + uuid.uuid4().int % 20000
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.fcm_server",
            "--port",
            str(port),
            "--service-account",
            str(credentials),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    server.stdout.readline()  # "fake FCM listening on …"
    return server, f"http://127.0.0.1:{port}", credentials


def main() -> None:
    """Seed, send, dispatch, measure; print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--mode", choices=["embedded", "celery"], default="embedded")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--preview-only", action="store_true")
    parser.add_argument(
        "--push", choices=["fcm", "apns"], default="fcm", help="every device's push service"
    )
    args = parser.parse_args()

    url, drop = _database(args.db)
    workdir = Path(tempfile.mkdtemp())
    queue = f"bench-{uuid.uuid4().hex[:10]}"
    env = dict(
        os.environ,
        SECRET_KEY="bench",  # noqa: S106 - a throwaway database
        DATABASE_URL=url,
        LOG_LEVEL="WARNING",
        RATELIMIT_ENABLED="false",
        CELERY_QUEUE=queue,
    )
    if args.mode == "celery":
        env["CELERY_BROKER_URL"] = REDIS_URL
    server = None
    if args.push == "apns":
        # Before the app is built: its preview counts APNs devices only when APNs is set.
        server, apns_settings = _fake_apns(workdir)
        env.update(apns_settings)
    os.environ.update(env)
    try:
        from flask_migrate import upgrade

        from mobile_api import create_app, tasks
        from mobile_api.extensions import db
        from mobile_api.services import campaigns
        from mobile_api.services.caller import Caller

        bench_caller = Caller(actor="bench", role="admin")

        app = create_app()
        with app.app_context():
            upgrade()
            started = time.perf_counter()
            seed(db.engine, args.devices)
            if args.push == "apns":
                as_apns(db.engine)
            result: dict[str, Any] = {
                "db": args.db,
                "devices": args.devices,
                "seed_s": round(time.perf_counter() - started, 1),
            }

            def create(audience: dict[str, Any]) -> Any:
                return campaigns.create(
                    db.session,
                    {
                        "name": "bench",
                        "category": "promotional",
                        "title": "t",
                        "body": "b",
                        "audience": audience,
                    },
                    bench_caller,
                )

            for label, audience in (("all", {}), ("min_os_version", {"min_os_version": "12.1"})):
                campaign = create(audience)
                timings = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    counts = campaigns.preview(db.session, campaign)
                    timings.append(time.perf_counter() - t0)
                result[f"preview_{label}_s"] = round(sorted(timings)[1], 3)
                result[f"eligible_{label}"] = counts["eligible"]
            campaign_id = create({}).id
        if args.preview_only:
            print(json.dumps(result), flush=True)
            return

        if server is None:
            server, endpoint, credentials = _fake_fcm(workdir)
            env.update(FCM_CREDENTIALS=str(credentials), FCM_ENDPOINT=endpoint)
        if args.mode == "celery":
            command = [
                "celery",
                "--app",
                "wsgi.celery",
                "worker",
                "-Q",
                queue,
                "-c",
                "1",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "warning",
            ]
        else:
            command = ["flask", "--app", "wsgi", "dispatch", "worker"]
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    *command,
                    *(["-n", f"w{i}@%h"] if args.mode == "celery" else []),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for i in range(args.workers)
        ]
        time.sleep(3 if args.mode == "celery" else 1.5)  # let them start
        with app.app_context():
            sent_at = time.perf_counter()
            campaigns.send(db.session, campaign_id, bench_caller)
            tasks.notify_queued(app, campaign_id)
            first = None
            engine = db.engine
            with engine.connect() as conn:
                while True:
                    status = conn.execute(
                        sa.text("SELECT status FROM campaigns WHERE id = :id"), {"id": campaign_id}
                    ).scalar()
                    if (
                        first is None
                        and conn.execute(
                            sa.text(
                                "SELECT 1 FROM campaign_deliveries WHERE campaign_id = :id"
                                " AND status IN ('sent', 'failed') LIMIT 1"
                            ),
                            {"id": campaign_id},
                        ).first()
                    ):
                        first = time.perf_counter() - sent_at
                    conn.rollback()
                    if status == "completed":
                        break
                    time.sleep(0.05)
            elapsed = time.perf_counter() - sent_at
            counts = campaigns.counts(db.session, db.session.get(campaigns.Campaign, campaign_id))
        dispatcher_cpu = sum(_cpu_seconds(worker.pid) for worker in workers)
        server_cpu = _cpu_seconds(server.pid)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
        handed = counts["sent"] + counts["failed"]
        result.update(
            mode=args.mode,
            workers=args.workers,
            elapsed_s=round(elapsed, 1),
            time_to_first_message_s=round(first or 0.0, 2),
            messages_per_s=round(handed / elapsed),
            sent=counts["sent"],
            failed=counts["failed"],
            suppressed=counts["suppressed"],
            invalid_tokens_pruned=counts["invalid_tokens_pruned"],
            targeted=counts["targeted"],
            push=args.push,
            dispatcher_cpu_us_per_message=round(dispatcher_cpu / max(handed, 1) * 1e6),
            fake_server_cpu_us_per_message=round(server_cpu / max(handed, 1) * 1e6),
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        )
        print(json.dumps(result), flush=True)
    finally:
        if server is not None:
            server.terminate()
        drop()
        if args.mode == "celery":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{queue}:*"):
                client.delete(key)


if __name__ == "__main__":
    main()
