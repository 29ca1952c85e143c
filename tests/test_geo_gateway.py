"""The places gateway through geopy's real code, against a loopback Nominatim (and real Redis)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests
from geopy.distance import geodesic
from requests.adapters import HTTPAdapter

from mobile_api.geo import (
    Area,
    MemoryCache,
    PlacesGateway,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RedisCache,
    make_cache,
)
from mobile_api.geo.gateway import _distance_m
from mobile_api.geo.records import Place
from mobile_api.geo.transport import MinimalRequestsAdapter
from mobile_api.pacing import (
    InProcessLimiter,
    Limiter,
    RedisLimiter,
)
from tests.conftest import REDIS_URL
from tests.fakes.nominatim_server import FakeNominatim, RecordedRequest

USER_AGENT = "mobile_api/1.0.0 (helpdesk app; ops@example.invalid)"
EXACT_LAT, EXACT_LON = 52.520008, 13.404954  # rounds to the cell (52.52, 13.40)
EXACT_STRINGS = ("52.520008", "13.404954", "52.5200", "13.4049", "520008", "404954")
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

# Header names a request to the provider may carry; anything else is a leak.
ALLOWED_HEADERS = {"host", "user-agent", "accept", "accept-encoding", "connection"}


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeNominatim]:
    with FakeNominatim() as server:
        yield server


@pytest.fixture
def gateways() -> Iterator[Callable[..., PlacesGateway]]:
    """A factory of gateways (pointed at a given fake server) that closes them afterwards."""
    made: list[PlacesGateway] = []

    def build(server: FakeNominatim, **overrides: Any) -> PlacesGateway:
        settings: dict[str, Any] = {
            "domain": server.domain,
            "scheme": "http",
            "user_agent": USER_AGENT,
            "timeout": 2.0,
            "limiter": InProcessLimiter(0.0),  # tests about spacing pass their own
        }
        settings.update(overrides)
        gateway = PlacesGateway(**settings)
        made.append(gateway)
        return gateway

    yield build
    for gateway in made:
        gateway.close()


def numbers_in(text: str) -> set[str]:
    """Every decimal number written in text."""
    return set(re.findall(r"-?\d+\.\d+", text))


def sent_text(request: RecordedRequest) -> str:
    """Everything of a request that could carry a coordinate: path, query and headers."""
    return " ".join([request.path, request.query, *(f"{k}: {v}" for k, v in request.headers)])


# --- minimisation on the wire ---------------------------------------------------------


@pytest.mark.parametrize(
    ("decimals", "cell"),
    [(2, (52.52, 13.40)), (1, (52.5, 13.4)), (3, (52.52, 13.405))],
)
def test_search_sends_only_the_rounded_point(
    fake: FakeNominatim,
    gateways: Callable[..., PlacesGateway],
    decimals: int,
    cell: tuple[float, float],
) -> None:
    gateways(fake, precision_decimals=decimals).search(
        EXACT_LAT, EXACT_LON, category="  Cafe ", limit=7
    )

    [request] = fake.recorded
    assert request.path == "/search"
    assert set(request.params) == {
        "q",
        "format",
        "limit",
        "viewbox",
        "bounded",
        "addressdetails",
    }
    assert request.param("q") == "cafe"
    assert request.param("limit") == "7"
    assert request.param("bounded") == "1"
    assert request.param("addressdetails") == "1"
    west, south, east, north = (float(v) for v in (request.param("viewbox") or "").split(","))
    assert (south + north) / 2 == pytest.approx(cell[0], abs=1e-9)
    assert (west + east) / 2 == pytest.approx(cell[1], abs=1e-3)  # widened for latitude
    assert south < EXACT_LAT < north and west < EXACT_LON < east
    for number in numbers_in(request.query.replace("%2C", ",")):
        assert len(number.split(".")[1]) <= decimals + 1, number
    for exact in EXACT_STRINGS:
        assert exact not in sent_text(request)


def test_reverse_sends_only_the_rounded_point_at_city_zoom(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    gateways(fake).reverse(EXACT_LAT, EXACT_LON)

    [request] = fake.recorded
    assert request.path == "/reverse"
    assert set(request.params) == {"lat", "lon", "format", "addressdetails", "zoom"}
    assert request.param("lat") == "52.52"
    assert request.param("lon") == "13.4"
    assert int(request.param("zoom") or 99) <= 12
    for exact in EXACT_STRINGS:
        assert exact not in sent_text(request)


def test_only_the_configured_user_agent_identifies_the_caller(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    gateway = gateways(fake)
    gateway.search(EXACT_LAT, EXACT_LON, query="pharmacy")
    gateway.reverse(EXACT_LAT, EXACT_LON)
    gateway.search(48.856613, 2.352222, category="cafe")

    assert len(fake.recorded) == 3
    for request in fake.recorded:
        names = {name.lower() for name, _ in request.headers}
        assert names <= ALLOWED_HEADERS, names - ALLOWED_HEADERS
        assert request.header("User-Agent") == USER_AGENT
        assert request.header("Cookie") is None
        assert request.header("Referer") is None


def test_cookies_set_by_the_provider_are_never_sent_back(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    # The fake really does set a cookie on every answer, or this test would prove nothing.
    probe = requests.get(f"http://{fake.domain}/search?q=x&viewbox=0,0,1,1", timeout=2)
    assert "nominatim_session=" in probe.headers["Set-Cookie"]
    fake.clear()

    gateway = gateways(fake)
    gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    gateway.search(EXACT_LAT + 0.1, EXACT_LON, category="cafe")
    gateway.reverse(EXACT_LAT, EXACT_LON)
    fake.fail(503)
    with pytest.raises(ProviderUnavailable):
        gateway.reverse(EXACT_LAT + 0.1, EXACT_LON)

    assert len(fake.recorded) == 4
    assert all(request.header("Cookie") is None for request in fake.recorded)


# --- caching --------------------------------------------------------------------------


def test_same_cell_is_served_from_cache_and_other_cells_are_not(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    lookups: list[tuple[str, str, str]] = []
    gateway = gateways(fake, on_lookup=lambda *args: lookups.append(args))

    first = gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    second = gateway.search(52.5151, 13.3951, category="CAFE")  # same cell, another exact point
    assert len(fake.recorded) == 1
    assert [p.name for p in first] != [] and {p.name for p in first} == {p.name for p in second}
    # Distances are not cached: they are recomputed from each exact point.
    assert [p.distance_m for p in first] != [p.distance_m for p in second]

    gateway.search(52.531, EXACT_LON, category="cafe")  # the next cell north
    gateway.search(EXACT_LAT, EXACT_LON, category="cafe", limit=5)  # a different limit
    gateway.search(EXACT_LAT, EXACT_LON, category="bar")  # a different term
    assert len(fake.recorded) == 4

    gateway.reverse(EXACT_LAT, EXACT_LON)
    gateway.reverse(52.5151, 13.3951)
    assert len(fake.recorded) == 5

    assert lookups == [
        ("search", "miss", "ok"),
        ("search", "hit", "ok"),
        ("search", "miss", "ok"),
        ("search", "miss", "ok"),
        ("search", "miss", "ok"),
        ("reverse", "miss", "ok"),
        ("reverse", "hit", "ok"),
    ]


class RecordingCache(MemoryCache):
    """A MemoryCache that keeps a JSON copy of everything stored in it."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[str] = []

    def set(self, key: str, value: Any, ttl: float) -> None:
        self.stored.append(json.dumps([key, value, ttl], ensure_ascii=False))
        super().set(key, value, ttl)


def test_cache_holds_provider_results_per_cell_but_never_the_exact_point(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    cache = RecordingCache()
    gateway = gateways(fake, cache=cache, cache_ttl=60)
    places = gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    gateway.reverse(EXACT_LAT, EXACT_LON)

    assert len(cache.stored) == 2
    (search_key, records, ttl), (reverse_key, area, _) = (json.loads(s) for s in cache.stored)
    assert ttl == 60
    assert "52.52" in search_key and "13.40" in search_key and "cafe" in search_key
    assert "52.52" in reverse_key and "13.40" in reverse_key
    assert all(set(r) == {"name", "category", "lat", "lon", "address"} for r in records)
    assert {r["name"] for r in records} == {p.name for p in places}
    assert set(area) == {"city", "district", "region", "country", "country_code"}
    for text in cache.stored:
        assert "distance" not in text
        for exact in EXACT_STRINGS:
            assert exact not in text


def test_failures_are_not_cached(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    gateway = gateways(fake)
    fake.fail(500, times=1)
    with pytest.raises(ProviderError):
        gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    assert gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    assert len(fake.recorded) == 2


def test_redis_cache_is_shared_between_gateways(
    fake: FakeNominatim,
    gateways: Callable[..., PlacesGateway],
    redis_prefix: tuple[redis.Redis, str],
) -> None:
    client, prefix = redis_prefix
    one = gateways(fake, cache=RedisCache(client, prefix + "cache:"), cache_ttl=30)
    other = gateways(fake, cache=RedisCache(redis.Redis.from_url(REDIS_URL), prefix + "cache:"))

    first = one.search(EXACT_LAT, EXACT_LON, category="cafe")
    assert other.search(EXACT_LAT, EXACT_LON, category="cafe") == first
    assert one.reverse(EXACT_LAT, EXACT_LON) == other.reverse(EXACT_LAT, EXACT_LON)
    assert len(fake.recorded) == 2

    keys = sorted(k.decode() for k in client.scan_iter(match=prefix + "*"))
    assert len(keys) == 2
    assert all(0 < client.pttl(k) <= 30_000 for k in keys)
    for key in keys:
        value = client.get(key)
        assert isinstance(value, bytes)
        stored = key + value.decode()
        assert all(exact not in stored for exact in EXACT_STRINGS)


# --- results --------------------------------------------------------------------------


def test_results_are_sorted_by_distance_from_the_exact_point(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    places = gateways(fake).search(EXACT_LAT, EXACT_LON, category="cafe", limit=8)

    assert len(places) == 8
    for place in places:
        expected = geodesic((EXACT_LAT, EXACT_LON), (place.lat, place.lon)).m
        assert abs(place.distance_m - expected) <= 0.5 + 0.05  # whole metres, cm-accurate
        assert isinstance(place.distance_m, int)
        assert place.category == "cafe"
        assert re.fullmatch(r"Teststraße \d+, Berlin", place.address), place.address
    assert [p.distance_m for p in places] == sorted(p.distance_m for p in places)
    # The fake answers in another order, so the gateway did sort.
    provider_order = [f"Cafe {n}" for n in ("Alpha", "Bravo", "Charlie", "Delta")]
    assert [p.name for p in places][:4] != provider_order
    assert gateways(fake).attribution.startswith("Data © OpenStreetMap contributors")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ((52.520008, 13.404954), (52.5245, 13.4120)),  # a few hundred metres
        ((-33.8688, 151.2093), (-33.9300, 151.2600)),  # ~8 km, southern hemisphere
        ((69.6492, 18.9553), (69.7000, 19.1000)),  # high latitude
        ((0.0, 179.99), (0.0, -179.99)),  # across the antimeridian
        ((48.8566, 2.3522), (51.5072, -0.1276)),  # far: the geodesic itself
    ],
)
def test_distances_match_the_geodesic_to_the_metre(
    start: tuple[float, float], end: tuple[float, float]
) -> None:
    assert abs(_distance_m(*start, *end) - geodesic(start, end).m) <= 0.55


def test_reverse_returns_only_the_coarse_area(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    area = gateways(fake).reverse(EXACT_LAT, EXACT_LON)

    assert area == Area(
        city="Berlin",
        district="Mitte",
        region="Berlin",
        country="Deutschland",
        country_code="DE",
    )
    assert [f.name for f in dataclasses.fields(Area)] == [
        "city",
        "district",
        "region",
        "country",
        "country_code",
    ]
    values = " ".join(str(v) for v in dataclasses.astuple(area))
    assert "Teststraße" not in values and "7" not in values and "10117" not in values


# --- provider faults ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(429, "7", 7), (503, "3", 3), (503, None, None), (429, None, None)],
)
def test_rate_limited_or_unavailable_provider(
    fake: FakeNominatim,
    gateways: Callable[..., PlacesGateway],
    status: int,
    retry_after: str | None,
    expected: float | None,
) -> None:
    lookups: list[tuple[str, str, str]] = []
    gateway = gateways(fake, on_lookup=lambda *args: lookups.append(args))
    fake.fail(status, retry_after=retry_after)

    with pytest.raises(ProviderUnavailable) as info:
        gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    assert info.value.retry_after == expected
    with pytest.raises(ProviderUnavailable):
        gateway.reverse(EXACT_LAT, EXACT_LON)

    assert len(fake.recorded) == 2  # one each: no retries
    assert lookups == [
        ("search", "miss", "unavailable"),
        ("reverse", "miss", "unavailable"),
    ]


@pytest.mark.parametrize(
    "behaviour",
    [
        {"status": 500},
        {"status": 502},
        {"status": 400},
        {"status": 403},
        {"garbage": True},
    ],
    ids=["500", "502", "400", "403", "garbage"],
)
def test_other_upstream_failures_are_provider_errors(
    fake: FakeNominatim,
    gateways: Callable[..., PlacesGateway],
    behaviour: dict[str, Any],
) -> None:
    lookups: list[tuple[str, str, str]] = []
    gateway = gateways(fake, on_lookup=lambda *args: lookups.append(args))
    fake.behave(**behaviour)

    with pytest.raises(ProviderError):
        gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    with pytest.raises(ProviderError):
        gateway.reverse(EXACT_LAT, EXACT_LON)

    assert len(fake.recorded) == 2
    assert lookups == [("search", "miss", "error"), ("reverse", "miss", "error")]


def test_redirects_are_not_followed(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    # A redirect could carry the query to another host; here it points back at the fake, so
    # following it would show up as a second recorded request.
    fake.behave(status=302, extra_headers={"Location": f"http://{fake.domain}/search?q=x"})
    with pytest.raises(ProviderError):
        gateways(fake).search(EXACT_LAT, EXACT_LON, category="cafe")
    assert len(fake.recorded) == 1


def test_the_transport_keeps_no_cookies_and_never_retries() -> None:
    adapter = MinimalRequestsAdapter(proxies={}, ssl_context=None)
    session = adapter.session
    for prefix in ("http://", "https://"):
        transport = session.get_adapter(prefix + "example.org")
        assert isinstance(transport, HTTPAdapter) and transport.max_retries.total == 0
    prepared = requests.Request("GET", "https://example.org/").prepare()
    cookie = requests.cookies.create_cookie("id", "1", domain="example.org")
    # MockRequest is requests' own stand-in for the urllib request a cookie policy expects.
    session.cookies.set_cookie_if_ok(cookie, cast(Any, requests.cookies.MockRequest(prepared)))
    assert len(session.cookies) == 0
    assert dict(session.headers) == {"Accept": "application/json"}
    assert session.trust_env is False


def test_slow_provider_times_out_within_the_deadline(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    lookups: list[tuple[str, str, str]] = []
    gateway = gateways(fake, timeout=0.3, on_lookup=lambda *args: lookups.append(args))
    fake.behave(delay=1.5)

    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    assert time.monotonic() - started < 1.0
    assert len(fake.recorded) == 1
    assert lookups == [("search", "miss", "timeout")]


def test_a_trickling_body_is_cut_at_the_total_deadline(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    gateway = gateways(fake, timeout=0.5)
    fake.behave(trickle=0.01)  # ~3 KB one byte at a time: each read is quick, the whole is not

    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    assert time.monotonic() - started < 1.0
    assert len(fake.recorded) == 1


def test_unreachable_provider_is_unavailable(
    gateways: Callable[..., PlacesGateway],
) -> None:
    with FakeNominatim() as server:
        gateway = gateways(server)  # the port is now free and nothing listens on it
    with pytest.raises(ProviderUnavailable) as info:
        gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    assert info.value.retry_after is None


def test_errors_quote_neither_urls_nor_coordinates(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    gateway = gateways(fake, timeout=0.3)
    for behaviour in (
        {"status": 500},
        {"status": 429},
        {"garbage": True},
        {"delay": 1.0},
    ):
        fake.behave(**behaviour)
        with pytest.raises((ProviderError, ProviderUnavailable, ProviderTimeout)) as info:
            gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
        # What a later layer would log with logger.exception(): message and whole traceback.
        rendered = "".join(traceback.format_exception(info.value))
        assert "viewbox" not in rendered and "/search" not in rendered
        assert not numbers_in(str(info.value))
        for forbidden in (*EXACT_STRINGS, "52.52", "13.4"):
            assert forbidden not in rendered


# --- provider usage policy: one request a second, deployment-wide ---------------------


def _spacing_run(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway], limiters: list[Limiter]
) -> list[float]:
    """Run six concurrent searches in distinct cells over two gateways; return arrival gaps."""
    pair = [gateways(fake, limiter=limiter, timeout=3.0) for limiter in limiters]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [
            pool.submit(pair[i % 2].search, 10.0 + i, 20.0, category="cafe") for i in range(6)
        ]
        for future in futures:
            future.result()  # re-raises a failed search here
    arrivals = sorted(r.received_at for r in fake.recorded)
    assert len(arrivals) == 6
    return [b - a for a, b in itertools.pairwise(arrivals)]


def _search_from_a_worker(settings: dict[str, Any], lats: list[float], start: Any) -> None:
    """One web worker of a host (a process of its own): its app searches cells nobody has."""
    from mobile_api import create_app, geo

    app = create_app(settings)
    with app.app_context():
        gateway = geo.current_gateway()
        start.wait(timeout=60)
        for lat in lats:
            gateway.search(lat, 20.0, category="cafe")


@pytest.mark.slow
def test_without_redis_the_workers_of_a_host_send_at_most_one_request_a_second(
    fake: FakeNominatim, tmp_path: Path
) -> None:
    settings = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": "sqlite://",
        "REDIS_URL": None,
        "GEOCODER_DOMAIN": fake.domain,
        "GEOCODER_SCHEME": "http",
        "GEOCODER_USER_AGENT": USER_AGENT,
        "GEOCODER_LIMITER_FILE": str(tmp_path / "instance" / "geocoder-slot"),
    }
    context = multiprocessing.get_context("spawn")  # a clean interpreter, as gunicorn's are
    start = context.Barrier(2)
    workers = [
        context.Process(target=_search_from_a_worker, args=(settings, [10.0 + i, 30.0 + i], start))
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]

    arrivals = sorted(r.received_at for r in fake.recorded)
    assert len(arrivals) == 4
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # GEOCODER_MIN_INTERVAL is 1 s; arrivals carry some scheduling jitter.
    assert min(gaps) >= 0.8, gaps


def test_the_slot_file_lives_in_the_instance_folder_by_default() -> None:
    from mobile_api import create_app

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert app.config["GEOCODER_LIMITER_FILE"] == os.path.join(app.instance_path, "geocoder-slot")


def test_limited_searches_reach_the_provider_spaced_out(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    shared = InProcessLimiter(0.2)
    gaps = _spacing_run(fake, gateways, [shared, shared])
    # Wall-clock arrivals carry scheduler jitter: only the overall span is checked.
    assert sum(gaps) >= 5 * 0.2 - 0.3, gaps


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_limiter_refuses_when_the_next_slot_is_beyond_the_deadline(
    fake: FakeNominatim,
    gateways: Callable[..., PlacesGateway],
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    limiter: Limiter
    if backend == "redis":
        client, prefix = request.getfixturevalue("redis_prefix")
        limiter = RedisLimiter(client, prefix + "slot", 10.0)
    else:
        limiter = InProcessLimiter(10.0)
    lookups: list[tuple[str, str, str]] = []
    gateway = gateways(fake, limiter=limiter, timeout=1.0, on_lookup=lambda *a: lookups.append(a))
    gateway.search(EXACT_LAT, EXACT_LON, category="cafe")

    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as info:
        gateway.search(EXACT_LAT + 1, EXACT_LON, category="cafe")
    assert time.monotonic() - started < 0.5  # refused at once, not after waiting
    assert info.value.retry_after is not None and 8.0 < info.value.retry_after <= 10.0
    # A cached answer needs no slot.
    assert gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    assert len(fake.recorded) == 1
    assert lookups == [
        ("search", "miss", "ok"),
        ("search", "miss", "unavailable"),
        ("search", "hit", "ok"),
    ]


# --- logging --------------------------------------------------------------------------


def test_no_coordinates_reach_any_log_record(
    fake: FakeNominatim,
    gateways: Callable[..., PlacesGateway],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "urllib3.connectionpool", "geopy", "mobile_api"):
        caplog.set_level(logging.DEBUG, logger=name)
    gateway = gateways(fake)

    gateway.search(EXACT_LAT, EXACT_LON, category="cafe")
    gateway.reverse(EXACT_LAT, EXACT_LON)
    fake.fail(500)  # the fake's error body quotes the request URL
    with pytest.raises(ProviderError):
        gateway.search(EXACT_LAT + 0.05, EXACT_LON, category="cafe")
    fake.fail(429, retry_after="1")
    with pytest.raises(ProviderUnavailable):
        gateway.reverse(EXACT_LAT + 0.05, EXACT_LON)

    records = caplog.records
    texts = [r.getMessage() + " " + (r.exc_text or "") for r in records] + [caplog.text]
    # The loggers really were talking: urllib3's request lines and geopy's URLs are there...
    assert any(
        r.name == "urllib3.connectionpool" and "GET /search" in r.getMessage() for r in records
    )
    assert any(r.name == "geopy" and "/reverse" in r.getMessage() for r in records)
    # ...but no coordinate, exact or as sent (every number of every request), is.
    sent_numbers = set().union(*(numbers_in(r.query.replace("%2C", ",")) for r in fake.recorded))
    assert "52.52" in sent_numbers
    for text in texts:
        for forbidden in (*EXACT_STRINGS, *sent_numbers):
            assert forbidden not in text, (forbidden, text)


# --- the smaller contracts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"lat": 91.0}, ValueError),
        ({"lon": -180.5}, ValueError),
        ({"lat": math.nan}, ValueError),
        ({"lat": "52.5"}, TypeError),
        ({"category": "cafe", "query": "coffee"}, ValueError),
        ({"category": None}, ValueError),
        ({"category": "   "}, ValueError),
        ({"limit": 0}, ValueError),
        ({"limit": 41}, ValueError),
    ],
)
def test_invalid_searches_are_refused_before_anything_is_sent(
    fake: FakeNominatim,
    gateways: Callable[..., PlacesGateway],
    arguments: dict[str, Any],
    error: type[Exception],
) -> None:
    call: dict[str, Any] = {"lat": EXACT_LAT, "lon": EXACT_LON, "category": "cafe"}
    call.update(arguments)
    lat, lon = call.pop("lat"), call.pop("lon")
    with pytest.raises(error) as info:
        gateways(fake).search(lat, lon, **call)
    assert not numbers_in(str(info.value))
    assert fake.recorded == []


def test_a_failing_metrics_hook_does_not_break_lookups(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    def broken(kind: str, cache: str, outcome: str) -> None:
        raise RuntimeError("metrics backend down")

    assert gateways(fake, on_lookup=broken).search(EXACT_LAT, EXACT_LON, category="cafe")


def test_an_app_user_agent_is_required() -> None:
    with pytest.raises(ValueError):
        PlacesGateway(domain="127.0.0.1:9", scheme="http", user_agent=" ")


def test_memory_cache_expires_and_evicts_the_least_recently_used() -> None:
    now = [0.0]
    cache = MemoryCache(max_entries=2, clock=lambda: now[0])
    cache.set("a", 1, ttl=10)
    cache.set("b", 2, ttl=10)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.set("c", 3, ttl=10)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    now[0] = 10.0
    assert cache.get("a") is None and len(cache) == 1


def test_redis_cache_degrades_to_misses_when_redis_is_down() -> None:
    cache = make_cache(UNREACHABLE_REDIS_URL)
    started = time.monotonic()
    cache.set("k", [1], ttl=10)
    assert cache.get("k") is None
    assert time.monotonic() - started < 1.0  # no retries with backoff inside a lookup


def test_the_cache_factory_picks_redis_only_when_configured(
    redis_prefix: tuple[redis.Redis, str],
) -> None:
    assert isinstance(make_cache(None), MemoryCache)
    assert isinstance(make_cache(REDIS_URL), RedisCache)


class _InstantProvider:
    """A provider answering from memory (40 places spread over the box), to time the gateway."""

    attribution = "test"

    def __init__(self, **settings: Any) -> None:
        pass

    def search(
        self,
        term: str,
        box: tuple[float, float, float, float],
        limit: int,
        timeout: float,
    ) -> list[Place]:
        south, west, north, east = box
        return [
            Place(
                name=f"P{i}",
                category=term,
                lat=south + (north - south) * ((i * 7) % 40) / 40,
                lon=west + (east - west) * ((i * 13) % 40) / 40,
                address="Somewhere",
            )
            for i in range(limit)
        ]

    def reverse(self, lat: float, lon: float, timeout: float) -> Area:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_the_gateway_adds_little_to_each_search() -> None:
    gateway = PlacesGateway(
        domain="unused",
        user_agent=USER_AGENT,
        limiter=InProcessLimiter(0.0),
        provider_factory=_InstantProvider,
    )
    durations = []
    for i in range(100):  # 50 misses (distinct cells), then 50 hits
        started = time.perf_counter()
        gateway.search(EXACT_LAT + (i % 50) / 10, EXACT_LON, category="cafe", limit=40)
        durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < 0.005


def test_a_lookup_queued_behind_the_same_cell_takes_the_answer_from_the_cache(
    fake: FakeNominatim, gateways: Callable[..., PlacesGateway]
) -> None:
    lookups: list[tuple[str, str, str]] = []
    gateway = gateways(
        fake, limiter=InProcessLimiter(0.5), on_lookup=lambda *args: lookups.append(args)
    )
    barrier = threading.Barrier(2)
    names: list[set[str]] = []

    def search() -> None:
        barrier.wait()
        names.append({p.name for p in gateway.search(EXACT_LAT, EXACT_LON, category="cafe")})

    threads = [threading.Thread(target=search) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # The second lookup waited for the provider's next slot; by then the first had
    # stored the cell's answer, so the slot was not spent on the same request again.
    assert len(fake.recorded) == 1
    assert len(names) == 2 and names[0] == names[1] != set()
    assert sorted(lookups) == [("search", "hit", "ok"), ("search", "miss", "ok")]
