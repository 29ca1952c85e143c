"""Ingestion throughput: 100-event batches from concurrent clients against gunicorn on PostgreSQL.

Run from the repository root:

    /work/main/.venv/bin/python bench/telemetry_ingest.py \\
        --clients 16 --workers 2 --worker-class gthread --threads 4 --seconds 20 --runs 3

Each run starts gunicorn (--workers, --worker-class, RATELIMIT_ENABLED=false) on a scratch
database, registers one analytics-consenting device per client, then has every
client thread POST pre-built batches of 100 unique events over its own HTTP
connection for --seconds. The rate is the number of rows that are in
telemetry_events at the end divided by the elapsed time; every reply must be
202 with accepted=100. The load generator's own CPU use is reported too, since
it shares the two cores with gunicorn and PostgreSQL.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from telemetry_common import ROOT, migrated_app, scratch_database

from mobile_api.extensions import db
from mobile_api.services import devices as device_service

VENV_BIN = Path(os.environ.get("VENV_BIN", "/work/main/.venv/bin"))
BATCH = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tokens(url: str, count: int) -> list[str]:
    """Register `count` devices with analytics on; their device tokens."""
    app = migrated_app(url)
    tokens = []
    with app.app_context():
        for i in range(count):
            result = device_service.register(
                db.session,
                {
                    "installation_id": f"bench-{i:04d}-{uuid.uuid4().hex[:8]}",
                    "platform": "android",
                    "os_version": "14",
                },
                None,
            )
            device_service.update_preferences(db.session, result.device, {"analytics": True}, None)
            tokens.append(result.device_token)
        db.engine.dispose()
    return tokens


def _bodies(client: int, count: int) -> list[bytes]:
    """`count` request bodies of BATCH events with ids unique to this client."""
    now = datetime.now(UTC)
    bodies = []
    for n in range(count):
        events = [
            {
                "event_id": f"c{client}-b{n}-e{i}",
                "name": "screen_view",
                "occurred_at": (now - timedelta(seconds=i)).isoformat(),
                "properties": {"screen": "tickets", "position": i, "cold_start": False},
            }
            for i in range(BATCH)
        ]
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def _start_gunicorn(url: str, port: int, workers: int, worker_class: str, threads: int):
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": "bench-secret",
        "RATELIMIT_ENABLED": "false",
    }
    command = [
        str(VENV_BIN / "gunicorn"),
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--threads",
        str(threads),
        "--bind",
        f"127.0.0.1:{port}",
        "wsgi:app",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(100):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gunicorn did not start")


def _process_cpu() -> dict[int, tuple[str, int, float]]:
    """pid -> (command, parent pid, CPU seconds so far) of every process we can read."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (
            command,
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / ticks,
        )
    return found


def _server_cpu(
    before: dict, after: dict, gunicorn_pid: int, backends: set[int]
) -> dict[str, float]:
    """CPU seconds the gunicorn tree and this database's backends used between two snapshots."""
    used = {"gunicorn": 0.0, "postgres": 0.0}
    for pid, (_, ppid, seconds) in after.items():
        spent = seconds - before.get(pid, ("", 0, 0.0))[2]
        if pid == gunicorn_pid or ppid == gunicorn_pid:
            used["gunicorn"] += spent
        elif pid in backends:
            used["postgres"] += spent
    return used


def _client(
    port: int, token: str, bodies: list[bytes], deadline: float, out: list[int], errors: list[str]
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = 0
    for body in bodies:
        if time.perf_counter() >= deadline:
            break
        try:
            conn.request("POST", "/v1/telemetry/events", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()  # sync workers close after each reply; reconnect and retry
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/telemetry/events", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        if response.status != 202 or json.loads(payload)["accepted"] != BATCH:
            errors.append(f"{response.status} {payload[:200]!r}")
            break
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent += 1
    out.append(sent)
    conn.close()


def run_once(args: argparse.Namespace) -> dict[str, float]:
    """One measured run on a fresh database; events/s stored and the generator's CPU."""
    with scratch_database("mobile_api_bench_ingest") as url:
        tokens = _tokens(url, args.clients)
        bodies = [_bodies(c, args.batches_per_client) for c in range(args.clients)]
        port = _free_port()
        server = _start_gunicorn(url, port, args.workers, args.worker_class, args.threads)
        engine = sa.create_engine(url)
        try:
            sent: list[int] = []
            errors: list[str] = []
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            before = _process_cpu()
            started = time.perf_counter()
            deadline = started + args.seconds
            threads = [
                threading.Thread(
                    target=_client, args=(port, tokens[c], bodies[c], deadline, sent, errors)
                )
                for c in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            after = _process_cpu()
            if errors:
                raise RuntimeError(f"refused batches: {errors[:3]}")
            with engine.connect() as conn:
                stored = conn.execute(sa.text("SELECT count(*) FROM telemetry_events")).scalar_one()
                backends = set(
                    conn.scalars(
                        sa.text(
                            "SELECT pid FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                )
            servers = _server_cpu(before, after, server.pid, backends)
            if stored != sum(sent) * BATCH:
                raise RuntimeError(f"stored {stored} rows for {sum(sent)} accepted batches")
            generator_cpu = (
                cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
            )
            return {
                "events_per_s": stored / elapsed,
                "batches_per_s": sum(sent) / elapsed,
                "generator_cores": generator_cpu / elapsed,
                "gunicorn_ms_per_batch": 1000 * servers["gunicorn"] / max(sum(sent), 1),
                "postgres_ms_per_batch": 1000 * servers["postgres"] / max(sum(sent), 1),
                "load_average": os.getloadavg()[0],
                "exhausted": float(any(n == args.batches_per_client for n in sent)),
            }
        finally:
            engine.dispose()
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def main() -> None:
    """Run the benchmark and print one line per run and the medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batches-per-client", type=int, default=600)
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        result = run_once(args)
        results.append(result)
        print(
            f"run {run + 1}: {result['events_per_s']:,.0f} events/s "
            f"({result['batches_per_s']:.0f} batches/s), "
            f"generator {result['generator_cores']:.2f} cores, CPU per batch: "
            f"gunicorn {result['gunicorn_ms_per_batch']:.1f} ms, "
            f"postgres (this database's backends) {result['postgres_ms_per_batch']:.1f} ms, "
            f"load average {result['load_average']:.1f}"
            + (" [ran out of pre-built batches]" if result["exhausted"] else ""),
            flush=True,
        )
    print(
        f"median: {statistics.median(r['events_per_s'] for r in results):,.0f} events/s, "
        f"generator {statistics.median(r['generator_cores'] for r in results):.2f} cores "
        f"({args.clients} clients, {args.workers} {args.worker_class} workers "
        f"x {args.threads} threads, {args.seconds:.0f} s per run)"
    )


if __name__ == "__main__":
    main()
