"""Where a registration and a check-in spend their CPU: cProfile over the WSGI stack.

    /work/main/.venv/bin/python bench/profile_registration.py [--requests 500] [--top 25]
    /work/main/.venv/bin/python bench/profile_registration.py --timing-only
    ... --database-url postgresql+psycopg://postgres@127.0.0.1:5432/<empty database>

Runs in-process through Flask's test client on a temporary SQLite file (no network,
no gunicorn), so the profile shows the application's own cost per request.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_migrate import upgrade

from mobile_api import create_app
from mobile_api.extensions import db
from mobile_api.services import keys as key_service


def main() -> None:
    """Profile N registrations, then N check-ins, and print the top functions."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--database-url",
        help="an empty database to migrate and use (default: a temporary SQLite file)",
    )
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="only the unprofiled ms/request (median of 3 rounds), no cProfile tables",
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {
                "SECRET_KEY": "profile",
                "SQLALCHEMY_DATABASE_URI": options.database_url
                or f"sqlite:///{tmp}/profile.sqlite3",
                "RATELIMIT_ENABLED": False,
                "LOG_LEVEL": "WARNING",
            }
        )
        with app.app_context():
            upgrade()
            _, key = key_service.create(db.session, "app", "profile")
        client = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}

        def register(n: int) -> str:
            body = {
                "installation_id": f"profile-{n:08d}",
                "platform": "android",
                "os_version": "14.1",
                "app_version": "5.2.0",
                "locale": "id-ID",
                "timezone": "Asia/Jakarta",
                "push_token": f"fcm:profile-{n}:APA91bHun4MxP5egoKMwt2KZFBaFUH",
                "push_permission": "granted",
            }
            response = client.post("/v1/devices", json=body, headers=headers)
            assert response.status_code == 201, response.get_json()
            token: str = response.get_json()["device_token"]
            return token

        register(-1)  # warm-up
        serial = iter(range(10**9))

        def registrations() -> list[str]:
            return [register(next(serial)) for _ in range(options.requests)]

        def check_ins(tokens: list[str]) -> None:
            for n, token in enumerate(tokens):
                response = client.patch(
                    "/v1/devices/me",
                    json={"app_version": f"5.2.{n % 7}", "os_version": "14.1"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 200

        # Unprofiled first: cProfile roughly doubles the cost of Python calls.
        rounds: dict[str, list[float]] = {"registration": [], "check-in": []}
        for _ in range(3):
            started = time.perf_counter()
            tokens = registrations()
            rounds["registration"].append(time.perf_counter() - started)
            started = time.perf_counter()
            check_ins(tokens)
            rounds["check-in"].append(time.perf_counter() - started)
        for label, seconds in rounds.items():
            ms = statistics.median(seconds) * 1000 / options.requests
            print(f"=== {label}: {ms:.3f} ms/request (test client, unprofiled, median of 3)")
        if options.timing_only:
            return

        profiler = cProfile.Profile()
        profiler.enable()
        tokens = registrations()
        profiler.disable()
        _print(profiler, "registration", options.top)
        profiler = cProfile.Profile()
        profiler.enable()
        check_ins(tokens)
        profiler.disable()
        _print(profiler, "check-in", options.top)


def _print(profiler: cProfile.Profile, label: str, top: int) -> None:
    print(f"\n=== {label} (profiled)")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main()
