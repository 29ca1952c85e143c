"""Places benchmark: our overhead per search (provider time excluded) and the cell cache's hit rate.

Run from the repository root:

    /work/main/.venv/bin/python bench/places.py

Options: --iterations (overhead samples per scenario, default 2000), --searches (stream length,
default 10000), --cities (default 50), --seed. Takes about a minute on 2 cores.

Overhead scenarios (medians and p95 in milliseconds):
  A0 GET /v1/devices/me: the same auth and request cycle without places, for comparison.
  A  POST /v1/places/search through Flask's test client on a cache hit: auth (device token
     lookup in SQLite), validation, consent gate, cache, ranking 20 results, JSON, access log.
  B  places_service.search() on a cache miss with an instant in-process provider: rounding, box,
     cache write, ranking 20 results from the exact point (the provider's time is zero).
  C  POST /v1/places/search on a miss through the real geopy + requests stack against the loopback
     Nominatim; the time inside the provider call is measured and subtracted.

Hit rate: a stream of searches around city centres (city chosen by a Zipf law, position scattered
around the centre, category by a Zipf law over the app's categories, 10% free-text queries from
a pool, 90% default limit), replayed through the real gateway with its in-process cache and a TTL
longer than the stream (a day of searches).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask
from flask_migrate import upgrade

from mobile_api import create_app
from mobile_api.extensions import db
from mobile_api.geo import Area, MemoryCache, Place, PlacesGateway
from mobile_api.geo.nominatim import NominatimProvider
from mobile_api.geo.wiring import EXTENSION as GATEWAY_EXTENSION
from mobile_api.pacing import InProcessLimiter
from mobile_api.services import keys
from mobile_api.services import places as places_service
from models import Device
from tests.fakes.nominatim_server import FakeNominatim

# 50 city centres (lat, lon) and a rough size rank: bigger cities first, searched more often.
CITIES = [
    (-6.2088, 106.8456), (35.6762, 139.6503), (28.6139, 77.2090), (31.2304, 121.4737),
    (-23.5505, -46.6333), (19.4326, -99.1332), (30.0444, 31.2357), (19.0760, 72.8777),
    (39.9042, 116.4074), (23.8103, 90.4125), (34.6937, 135.5023), (40.7128, -74.0060),
    (24.8607, 67.0011), (-34.6037, -58.3816), (41.0082, 28.9784), (22.5726, 88.3639),
    (14.5995, 120.9842), (6.5244, 3.3792), (-22.9068, -43.1729), (23.1291, 113.2644),
    (34.0522, -118.2437), (55.7558, 37.6173), (22.3193, 114.1694), (48.8566, 2.3522),
    (-12.0464, -77.0428), (51.5074, -0.1278), (13.7563, 100.5018), (37.5665, 126.9780),
    (-6.9175, 107.6191), (3.1390, 101.6869), (-7.2575, 112.7521), (41.8781, -87.6298),
    (1.3521, 103.8198), (40.4168, -3.7038), (43.6532, -79.3832), (52.5200, 13.4050),
    (-33.8688, 151.2093), (25.2048, 55.2708), (45.4642, 9.1900), (-37.8136, 144.9631),
    (50.1109, 8.6821), (59.3293, 18.0686), (47.3769, 8.5417), (-1.2921, 36.8219),
    (10.8231, 106.6297), (-3.7319, -38.5267), (3.5952, 98.6722), (48.1351, 11.5820),
    (-8.6500, 115.2167), (52.3676, 4.9041),
]  # fmt: skip
PER_CELL_RESULTS = 20
# Where people search, as standard deviations (km) of their distance from the centre, one picked
# per search: the inner city only, or the whole metropolitan area.
STREAMS = {
    "inner city (σ 1 km)": (1.0,),
    "metro area (σ 1.5–6 km)": (1.5, 3.0, 3.0, 6.0),
}


class InstantProvider:
    """A provider that answers at once with 20 places around the box centre (no I/O)."""

    attribution = "bench"

    def __init__(self, **_: Any) -> None:
        pass

    def search(
        self, term: str, box: tuple[float, float, float, float], limit: int, timeout: float
    ) -> list[Place]:
        south, west, north, east = box
        lat, lon = (south + north) / 2, (west + east) / 2
        return [
            Place(
                name=f"{term} {i}",
                category=term,
                lat=lat + (i % 5 - 2) * 0.003,
                lon=lon + (i // 5 - 2) * 0.003,
                address=f"Street {i}, City",
            )
            for i in range(min(limit, PER_CELL_RESULTS))
        ]

    def reverse(self, lat: float, lon: float, timeout: float) -> Area:
        return Area(city="C", district=None, region=None, country=None, country_code=None)

    def close(self) -> None:
        pass


class TimedProvider(NominatimProvider):
    """The real Nominatim provider, recording how long each call took."""

    spent: list[float] = []

    def search(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return super().search(*args, **kwargs)
        finally:
            TimedProvider.spent.append(time.perf_counter() - started)


def percentiles(samples: list[float]) -> tuple[float, float]:
    """Median and p95 in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


def build_app(workdir: str) -> tuple[Flask, str]:
    """An app on a scratch SQLite database, with a device allowed to use places."""
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "bench",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{workdir}/bench.sqlite3",
            "RATELIMIT_ENABLED": False,
            "REDIS_URL": None,
        }
    )
    with app.app_context():
        upgrade()
        _, secret = keys.create(db.session, "app", "bench")
    # Logs are formatted as in production but written nowhere (Alembic adds a handler of its own).
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
    for logger in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sink)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"installation_id": "bench-install-1", "platform": "ios", "os_version": "17.4"}
    token = client.post("/v1/devices", json=body | {"location_permission": "precise"}, headers=auth)
    device_token: str = token.get_json()["device_token"]
    client.put(
        "/v1/devices/me/preferences",
        json={"location_services": True},
        headers={"Authorization": f"Bearer {device_token}"},
    )
    return app, device_token


def gateway(provider_factory: Any, domain: str = "bench.invalid") -> PlacesGateway:
    """A gateway with no request spacing (the 1 request/s wait is not our overhead)."""
    return PlacesGateway(
        domain=domain,
        scheme="http",
        user_agent="mobile_api-bench/1.0",
        cache=MemoryCache(max_entries=1_000_000),
        limiter=InProcessLimiter(0.0),
        provider_factory=provider_factory,
    )


def overhead(iterations: int, rng: random.Random) -> dict[str, tuple[float, float]]:
    """Scenarios A, B, C: our time per search in milliseconds (median, p95)."""
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        app, token = build_app(workdir)
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        body = {"lat": 48.137154, "lon": 11.576124, "category": "cafe", "limit": 20}

        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            response = client.get("/v1/devices/me", headers=headers)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200
        results["A0 baseline: GET /v1/devices/me (same auth, no places)"] = percentiles(samples)

        app.extensions[GATEWAY_EXTENSION] = gateway(InstantProvider)
        assert client.post("/v1/places/search", json=body, headers=headers).status_code == 200
        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            response = client.post("/v1/places/search", json=body, headers=headers)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200
        results["A  HTTP request, cache hit"] = percentiles(samples)

        instant = gateway(InstantProvider)
        with app.app_context():
            device = db.session.get(Device, db.session.query(Device.id).scalar())
            assert device is not None
            samples = []
            for i in range(iterations):
                # A new cell every time: always a miss.
                lat, lon = -60 + i * 0.011, rng.uniform(-170, 170)
                started = time.perf_counter()
                places_service.search(instant, device, lat, lon, category="cafe")
                samples.append(time.perf_counter() - started)
        results["B  service call, cache miss, instant provider"] = percentiles(samples)

        with FakeNominatim() as fake:
            app.extensions[GATEWAY_EXTENSION] = gateway(TimedProvider, fake.domain)
            samples = []
            # Capped: every miss is a loopback HTTP round trip (tens of ms of delayed ACKs).
            for i in range(min(iterations, 200)):
                miss = body | {"lat": -60 + i * 0.011}
                TimedProvider.spent.clear()
                started = time.perf_counter()
                response = client.post("/v1/places/search", json=miss, headers=headers)
                total = time.perf_counter() - started
                assert response.status_code == 200, response.get_json()
                samples.append(total - sum(TimedProvider.spent))
        results["C  HTTP request, cache miss, real geopy minus provider call"] = percentiles(
            samples
        )
    return results


def search_stream(
    count: int, cities: int, spreads_km: tuple[float, ...], rng: random.Random
) -> list[dict[str, Any]]:
    """A day of searches: where, what and how many, as the app would send them."""
    centres = CITIES[:cities]
    city_weights = [1 / (rank + 1) for rank in range(len(centres))]
    categories = sorted(places_service.CATEGORIES, key=lambda c: c != "cafe")
    category_weights = [1 / (rank + 1) for rank in range(len(categories))]
    queries = [f"query {n}" for n in range(200)]
    query_weights = [1 / (rank + 1) for rank in range(len(queries))]
    stream = []
    for _ in range(count):
        lat0, lon0 = rng.choices(centres, city_weights)[0]
        # People search where they are: most within a few km of the centre, some further out.
        spread_km = rng.choice(spreads_km)
        lat = lat0 + rng.gauss(0, spread_km / 111.32)
        lon = lon0 + rng.gauss(0, spread_km / (111.32 * math.cos(math.radians(lat0))))
        search: dict[str, Any] = {"lat": lat, "lon": lon, "limit": 20 if rng.random() < 0.9 else 40}
        if rng.random() < 0.1:
            search["query"] = rng.choices(queries, query_weights)[0]
        else:
            search["category"] = rng.choices(categories, category_weights)[0]
        stream.append(search)
    return stream


def hit_rate(
    stream: list[dict[str, Any]], decimals: int, permission: str = "precise"
) -> tuple[float, float, int]:
    """Overall hit rate, hit rate over the second half, and the number of upstream requests.

    `permission` is the devices' OS location permission: `approximate` uses the 3 km grid.
    """
    outcomes: list[str] = []
    gw = PlacesGateway(
        domain="bench.invalid",
        user_agent="mobile_api-bench/1.0",
        precision_decimals=decimals,
        cache=MemoryCache(max_entries=1_000_000),
        limiter=InProcessLimiter(0.0),
        provider_factory=InstantProvider,
        on_lookup=lambda kind, cache, outcome: outcomes.append(cache),
    )
    device = Device(location_services=True, location_permission=permission)
    for search in stream:
        places_service.search(gw, device, **search)
    hits = [o == "hit" for o in outcomes]
    half = hits[len(hits) // 2 :]
    return sum(hits) / len(hits), sum(half) / len(half), hits.count(False)


def main() -> None:
    """Run both measurements and print a Markdown summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--searches", type=int, default=10_000)
    parser.add_argument("--cities", type=int, default=50)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    started = time.perf_counter()
    print(f"## Overhead per search, provider time excluded ({args.iterations} samples)\n")
    print("| scenario | p50 ms | p95 ms |\n|---|---|---|")
    for name, (p50, p95) in overhead(args.iterations, rng).items():
        print(f"| {name} | {p50:.2f} | {p95:.2f} |")

    print(f"\n## Cache hit rate, {args.searches} searches around {args.cities} city centres\n")
    print("| stream | LOCATION_PRECISION_DECIMALS | hit rate | second half | upstream requests |")
    print("|---|---|---|---|---|")
    for label, spreads in STREAMS.items():
        stream = search_stream(args.searches, args.cities, spreads, rng)
        for decimals in (1, 2, 3):
            overall, later, upstream = hit_rate(stream, decimals)
            print(f"| {label} | {decimals} | {overall:.1%} | {later:.1%} | {upstream} |")
        overall, later, upstream = hit_rate(stream, 2, permission="approximate")
        print(f"| {label} | approximate (3 km grid) | {overall:.1%} | {later:.1%} | {upstream} |")
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
