"""Cost of the JSON body guards (415, depth, unstorable text) on a 100-event telemetry batch.

Run from the repository root:

    .venv/bin/python bench/json_guard.py --runs 5

In-process, no server: each run times --iterations loads of the same body, once with
webargs' plain JSON parse and once through the project parser (parse plus guards),
and prints the median microseconds per body of each and their difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webargs import core

from mobile_api.routes import Blueprint
from tests.conftest import make_app


def batch(events: int) -> bytes:
    """A telemetry batch like the app sends: `events` events with three properties each."""
    occurred = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    body = {
        "events": [
            {
                "event_id": f"ev-{index:06d}",
                "name": "app_open",
                "occurred_at": occurred,
                "properties": {"screen": "home", "cold_start": True, "ms": 412},
            }
            for index in range(events)
        ]
    }
    return json.dumps(body).encode()


def per_body(load: Callable[[], object], iterations: int) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        load()
    return (time.perf_counter() - started) / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100)
    args = parser.parse_args()
    raw = batch(args.events)
    app = make_app("sqlite://")
    guarded = Blueprint.ARGUMENTS_PARSER
    plain, full = [], []
    for _ in range(args.runs):
        plain.append(per_body(lambda: core.parse_json(raw), args.iterations))
        with app.test_request_context(data=raw, content_type="application/json") as context:
            full.append(per_body(lambda: guarded._raw_load_json(context.request), args.iterations))
    p, f = statistics.median(plain), statistics.median(full)
    print(f"body {len(raw)} bytes, {args.events} events, medians of {args.runs} runs:")
    print(f"  plain parse {p:.0f} us, parse + guards {f:.0f} us, guards {f - p:.0f} us")


if __name__ == "__main__":
    main()
