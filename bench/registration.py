"""Registration and check-in under load: gunicorn (2 workers) driven by wrk.

One command, from the repository root (needs `wrk`: apt-get install -y wrk):

    /work/main/.venv/bin/python bench/registration.py            # full run, ~15 min
    /work/main/.venv/bin/python bench/registration.py --quick    # smoke run, ~1 min
    /work/main/.venv/bin/python bench/registration.py --threads 4  # gthread workers, to compare

For each backend (SQLite file in WAL mode in a temp dir; a scratch PostgreSQL
database, created and dropped) and each number of pre-registered devices (0 and
1,000,000, seeded with bulk SQL), it starts gunicorn with the project's
gunicorn.conf.py and 2 workers (`-w 2`, sync; `--threads N` for gthread) with rate
limits off and a fresh SECRET_KEY, then measures separately, `--runs` times each:

- registration: POST /v1/devices, a unique installation id and push token per request;
- check-in: PATCH /v1/devices/me, cycling through the tokens of devices registered first.

It reports req/s, p50/p99 latency (medians over runs), the gunicorn workers' CPU per
request, the CPU wrk itself used, and the workers' RSS before and after. Raw results
go to bench/out/registration-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LUA = ROOT / "bench" / "registration.lua"
OUT = ROOT / "bench" / "out"
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHECK_IN_DEVICES = 256


@dataclass
class Run:
    """One wrk run."""

    requests: int
    duration_us: int
    non_2xx: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    wrk_cpu_s: float = 0.0
    worker_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / (self.duration_us / 1e6)


@dataclass
class Scenario:
    """All runs of one backend × seeded size."""

    backend: str
    seeded: int
    seed_seconds: float
    rss_kib_before: list[int]
    rss_kib_after: list[int] = field(default_factory=list)
    runs: dict[str, list[Run]] = field(default_factory=dict)


# -- databases ---------------------------------------------------------------------------


@contextmanager
def sqlite_database(workdir: Path) -> Any:
    """A SQLite file in the temp dir; WAL is switched on by the app at connect."""
    yield f"sqlite:///{workdir / 'bench.sqlite3'}"


@contextmanager
def postgres_database() -> Any:
    """A scratch PostgreSQL database, dropped afterwards."""
    name = f"mobile_api_bench_{secrets.token_hex(5)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        server = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0]
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Rows that look like real devices: unique installation ids and token hashes, 60 %
# with a (unique) push token, mixed platforms, versions, locales and permissions.
SEED_POSTGRES = """
INSERT INTO devices (
    id, installation_id, token_hash, platform, os_version, device_model, app_version,
    locale, timezone, push_token, push_token_hash, push_permission, location_permission,
    account_id, promotional_push, location_services, analytics,
    created_at, updated_at, last_seen_at)
SELECT
    '00' || upper(lpad(to_hex(i), 24, '0')),
    'seed-' || md5(i::text),
    encode(sha256(('device-token-' || i)::bytea), 'hex'),
    CASE WHEN i % 3 = 0 THEN 'ios' ELSE 'android' END,
    (10 + i % 8)::text || '.' || (i % 4)::text,
    'Model ' || (i % 50)::text,
    '5.' || (i % 10)::text || '.0',
    (ARRAY['id-ID', 'en-US', 'en-GB', 'ms-MY', 'th-TH'])[1 + i % 5],
    (ARRAY['Asia/Jakarta', 'Asia/Makassar', 'Europe/London', 'Asia/Bangkok'])[1 + i % 4],
    CASE WHEN i % 5 < 3 THEN 'fcm:seed-' || i || ':' || md5(i::text) END,
    CASE WHEN i % 5 < 3
        THEN encode(sha256(('fcm:seed-' || i || ':' || md5(i::text))::bytea), 'hex') END,
    (ARRAY['granted', 'denied', 'not_determined', 'provisional'])[1 + i % 4],
    (ARRAY['precise', 'approximate', 'denied', 'not_determined'])[1 + i % 4],
    CASE WHEN i % 2 = 0 THEN 'acct-' || (i / 2)::text END,
    i % 3 = 0, i % 4 = 0, i % 2 = 0,
    now() - make_interval(secs => i % 8000000),
    now() - make_interval(secs => i % 4000000),
    now() - make_interval(secs => i % 2600000)
FROM generate_series(1, {rows}) AS i
"""

SEED_SQLITE = """
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :rows)
INSERT INTO devices (
    id, installation_id, token_hash, platform, os_version, device_model, app_version,
    locale, timezone, push_token, push_token_hash, push_permission, location_permission,
    account_id, promotional_push, location_services, analytics,
    created_at, updated_at, last_seen_at)
SELECT
    printf('00%024X', i),
    'seed-' || i || '-' || lower(hex(randomblob(6))),
    lower(hex(randomblob(32))),
    CASE WHEN i % 3 = 0 THEN 'ios' ELSE 'android' END,
    (10 + i % 8) || '.' || (i % 4),
    'Model ' || (i % 50),
    '5.' || (i % 10) || '.0',
    CASE i % 5 WHEN 0 THEN 'id-ID' WHEN 1 THEN 'en-US' WHEN 2 THEN 'en-GB'
        WHEN 3 THEN 'ms-MY' ELSE 'th-TH' END,
    CASE i % 4 WHEN 0 THEN 'Asia/Jakarta' WHEN 1 THEN 'Asia/Makassar'
        WHEN 2 THEN 'Europe/London' ELSE 'Asia/Bangkok' END,
    CASE WHEN i % 5 < 3 THEN 'fcm:seed-' || i || ':' || lower(hex(randomblob(40))) END,
    CASE WHEN i % 5 < 3 THEN lower(hex(randomblob(32))) END,
    CASE i % 4 WHEN 0 THEN 'granted' WHEN 1 THEN 'denied' WHEN 2 THEN 'not_determined'
        ELSE 'provisional' END,
    CASE i % 4 WHEN 0 THEN 'precise' WHEN 1 THEN 'approximate' WHEN 2 THEN 'denied'
        ELSE 'not_determined' END,
    CASE WHEN i % 2 = 0 THEN 'acct-' || (i / 2) END,
    i % 3 = 0, i % 4 = 0, i % 2 = 0,
    datetime('now', '-' || (i % 8000000) || ' seconds'),
    datetime('now', '-' || (i % 4000000) || ' seconds'),
    datetime('now', '-' || (i % 2600000) || ' seconds')
FROM s
"""


def seed(url: str, rows: int) -> float:
    """Insert `rows` devices with one bulk statement; returns the seconds it took."""
    if rows == 0:
        return 0.0
    started = time.perf_counter()
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(SEED_SQLITE, {"rows": rows})
        conn.execute("ANALYZE")
        conn.close()
    else:
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(SEED_POSTGRES.format(rows=int(rows)).encode())
            conn.execute("VACUUM ANALYZE devices")
    return time.perf_counter() - started


# -- the server --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def flask(env: dict[str, str], *args: str) -> str:
    """Run `flask --app wsgi ...` from the repository root; returns its stdout."""
    result = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def worker_pids(master: int) -> list[int]:
    """The pids of the gunicorn workers (children of the master)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; fields after ")" are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            pids.append(int(entry.name))
    return sorted(pids)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


@contextmanager
def gunicorn(env: dict[str, str], port: int, log: Path, threads: int | None) -> Any:
    """gunicorn with the project's gunicorn.conf.py and 2 workers; yields the master.

    `threads` overrides the configuration's threads per worker; 1 means sync workers.
    """
    workers = ["--config", "gunicorn.conf.py", "-w", "2"]
    if threads == 1:  # gunicorn runs gthread whenever threads > 1, whatever -k says
        workers += ["-k", "sync", "--threads", "1"]
    elif threads:
        workers += ["-k", "gthread", "--threads", str(threads)]
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [str(BIN / "gunicorn"), *workers, "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=log_file,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"gunicorn did not start; see {log}")
                time.sleep(0.2)
            while len(worker_pids(server.pid)) < 2:
                time.sleep(0.1)
            yield server
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


def wrk(url: str, seconds: float, connections: int, args: list[str], workers: list[int]) -> Run:
    """One wrk run with the Lua script; its own CPU and the workers' CPU are measured."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = cpu_seconds(workers)
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "5s",
            "-s",
            str(LUA),
            url,
            "--",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(row for row in result.stdout.splitlines() if row.startswith("RESULT "))
    run = Run(**json.loads(line.removeprefix("RESULT ")))
    run.wrk_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run.worker_cpu_s = cpu_seconds(workers) - worker_cpu
    return run


def register_devices(base: str, app_key: str, count: int) -> list[str]:
    """Register devices through the API; their tokens."""
    tokens = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {app_key}"
        for n in range(count):
            body = {
                "installation_id": f"checkin-{secrets.token_hex(6)}-{n}",
                "platform": "android",
                "os_version": "14.1",
                "app_version": "5.2.0",
            }
            response = session.post(f"{base}/v1/devices", json=body, timeout=10)
            response.raise_for_status()
            tokens.append(response.json()["device_token"])
    return tokens


# -- the scenario ------------------------------------------------------------------------


def scenario(backend: str, rows: int, options: argparse.Namespace, workdir: Path) -> Scenario:
    """Seed, start gunicorn, measure registration then check-in."""
    database = sqlite_database(workdir) if backend == "sqlite" else postgres_database()
    with database as url:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"CELERY_BROKER_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}
        }
        env.update(
            DATABASE_URL=url,
            SECRET_KEY=secrets.token_urlsafe(32),
            RATELIMIT_ENABLED="false",
            PATH=f"{BIN}:{env.get('PATH', '')}",
        )
        flask(env, "db", "upgrade")
        seed_seconds = seed(url, rows)
        print(f"[{backend} {rows:,}] seeded in {seed_seconds:.1f} s", flush=True)
        app_key = flask(env, "keys", "create", "--role", "app", "--name", "bench").splitlines()[-1]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = workdir / f"gunicorn-{backend}-{rows}.log"
        with gunicorn(env, port, log, options.threads) as server:
            workers = worker_pids(server.pid)
            tokens = register_devices(base, app_key, CHECK_IN_DEVICES)
            tokens_file = workdir / "tokens.txt"
            tokens_file.write_text("\n".join(tokens) + "\n")
            result = Scenario(backend, rows, seed_seconds, [rss_kib(pid) for pid in workers])
            modes = {
                "registration": ["register", app_key],
                "check-in": ["checkin", str(tokens_file)],
            }
            for name, (mode, credential) in modes.items():
                prefix = secrets.token_hex(4)
                # Warm-up: imports, connection pools, caches.
                warmup = [mode, prefix + "w", credential]
                wrk(base, options.warmup, options.connections, warmup, workers)
                runs = []
                for n in range(options.runs):
                    run = wrk(
                        base,
                        options.duration,
                        options.connections,
                        [mode, f"{prefix}r{n}", credential],
                        workers,
                    )
                    if run.non_2xx or run.connect_errors or run.timeouts:
                        raise RuntimeError(f"{name}: failed requests in run {n}: {run}")
                    print(
                        f"[{backend} {rows:,}] {name} run {n + 1}: {run.rps:.0f} req/s, "
                        f"p50 {run.p50_us / 1000:.1f} ms, p99 {run.p99_us / 1000:.1f} ms, "
                        f"worker CPU {run.worker_cpu_s * 1e3 / run.requests:.2f} ms/req, "
                        f"wrk CPU {100 * run.wrk_cpu_s / options.duration:.0f} % of a core",
                        flush=True,
                    )
                    runs.append(run)
                result.runs[name] = runs
            result.rss_kib_after = [rss_kib(pid) for pid in workers]
            tokens_file.unlink()
    return result


def median(values: list[float]) -> float:
    """The median of the values."""
    return statistics.median(values)


def table(results: list[Scenario], duration: float) -> str:
    """Markdown table of the medians."""
    lines = [
        "| backend | devices stored | endpoint | req/s | p50 ms | p99 ms "
        "| worker CPU ms/req | wrk CPU % core | worker RSS MiB before → after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        rss = " / ".join(
            f"{b / 1024:.0f} → {a / 1024:.0f}"
            for b, a in zip(result.rss_kib_before, result.rss_kib_after, strict=True)
        )
        for name, runs in result.runs.items():
            lines.append(
                f"| {result.backend} | {result.seeded:,} | {name} "
                f"| {median([r.rps for r in runs]):.0f} "
                f"| {median([r.p50_us for r in runs]) / 1000:.1f} "
                f"| {median([r.p99_us for r in runs]) / 1000:.1f} "
                f"| {median([r.worker_cpu_s * 1e3 / r.requests for r in runs]):.2f} "
                f"| {median([100 * r.wrk_cpu_s / duration for r in runs]):.0f} "
                f"| {rss} |"
            )
    return "\n".join(lines)


def ratios(results: list[Scenario]) -> str:
    """req/s and p99 with the most devices stored, relative to none stored."""
    lines = []
    by_key = {(r.backend, r.seeded): r for r in results}
    for backend in dict.fromkeys(r.backend for r in results):
        sizes = sorted(size for b, size in by_key if b == backend)
        if len(sizes) < 2:
            continue
        small, large = by_key[(backend, sizes[0])], by_key[(backend, sizes[-1])]
        for name in small.runs:
            rps = median([r.rps for r in large.runs[name]]) / median(
                [r.rps for r in small.runs[name]]
            )
            p99 = median([r.p99_us for r in large.runs[name]]) / median(
                [r.p99_us for r in small.runs[name]]
            )
            lines.append(
                f"- {backend} {name}: req/s ×{rps:.2f}, p99 ×{p99:.2f} "
                f"({sizes[-1]:,} vs {sizes[0]:,} devices)"
            )
    return "\n".join(lines)


def main() -> None:
    """Parse options, run every scenario, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, short runs")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--rows", default=None, help="comma-separated seeded sizes")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per worker instead of gunicorn.conf.py's (1: sync workers)",
    )
    options = parser.parse_args()
    quick = options.quick
    options.rows = options.rows or ("0,10000" if quick else "0,1000000")
    options.runs = options.runs or (1 if quick else 3)
    options.duration = options.duration or (3 if quick else 15)
    options.warmup = options.warmup or (1 if quick else 5)
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-registration-") as tmp:
        for backend in options.backends.split(","):
            for rows in (int(size) for size in options.rows.split(",")):
                results.append(scenario(backend, rows, options, Path(tmp)))
    report = table(results, options.duration)
    print()
    print(report)
    print(ratios(results))
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    saved = OUT / f"registration-{stamp}.json"
    saved.write_text(
        json.dumps({"options": vars(options), "results": [asdict(r) for r in results]}, indent=2)
    )
    print(f"\nraw results: {saved.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
