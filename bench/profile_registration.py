"""Where a registration and a check-in spend their CPU: cProfile over the WSGI stack.

    /work/main/.venv/bin/python bench/profile_registration.py [--requests 500] [--top 25]

Runs in-process through Flask's test client on a temporary SQLite file (no network,
no gunicorn), so the profile shows the application's own cost per request.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
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
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {
                "SECRET_KEY": "profile",
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp}/profile.sqlite3",
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
        for label, action in (
            ("registration", register),
            ("check-in", None),
        ):
            profiler = cProfile.Profile()
            if action is register:
                started = time.perf_counter()
                profiler.enable()
                tokens = [register(n) for n in range(options.requests)]
                profiler.disable()
            else:
                started = time.perf_counter()
                profiler.enable()
                for n, token in enumerate(tokens):
                    response = client.patch(
                        "/v1/devices/me",
                        json={"app_version": f"5.2.{n % 7}", "os_version": "14.1"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert response.status_code == 200
                profiler.disable()
            elapsed = time.perf_counter() - started
            print(f"\n=== {label}: {elapsed * 1000 / options.requests:.2f} ms/request (profiled)")
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(options.top)
            stats.sort_stats("tottime").print_stats(options.top)


if __name__ == "__main__":
    main()
