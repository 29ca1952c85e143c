"""Location precision follows the OS permission, as seen by the loopback Nominatim.

An `approximate` device is known to the provider only by a grid cell at least about 3 km wide in
both directions, at the equator as at 60°N; a `precise` one by LOCATION_PRECISION_DECIMALS.
The walks below step across the map in 100 m steps and watch what reaches the provider: the whole
request (path, query, headers) may change only where the cell changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from geographiclib.geodesic import Geodesic
from geopy.distance import geodesic

from mobile_api.geo.grid import grid_cell
from tests.fakes.nominatim_server import FakeNominatim
from tests.places_fixtures import (
    everything_sent,
    located,  # noqa: F401 (fixture)
    nominatim,  # noqa: F401 (fixture)
    places_settings,  # noqa: F401 (fixture)
    reverse,
    search,
    unique_term,
)

MIN_CELL_M = 3_000.0
WGS84 = Geodesic.WGS84
STEP_M = 100.0
WALK_M = 9_000.0
# Start points, each near the middle of an approximate-grid cell (the walks confirm the size).
LATITUDES = {"equator": (0.015321, 10.120123), "60N": (60.015432, 10.789123)}


@pytest.fixture
def cache_ttl() -> int:
    """No cache: every lookup reaches the provider (tests about the cache parametrize this)."""
    return 0


@pytest.fixture
def app(
    app_factory: Callable[..., Flask],
    places_settings: dict[str, Any],  # noqa: F811
    cache_ttl: int,
) -> Flask:
    """The app on the loopback Nominatim, with no request spacing and no per-device limit."""
    return app_factory(
        **places_settings,
        PLACES_CACHE_TTL=cache_ttl,
        GEOCODER_MIN_INTERVAL=0.0,
        RATELIMIT_ENABLED=False,
    )


def _walk(lat: float, lon: float, bearing: float) -> Iterator[tuple[float, float]]:
    """Points every STEP_M metres from (lat, lon) along a bearing, for WALK_M metres."""
    steps = int(WALK_M / STEP_M)
    for i in range(steps + 1):
        point = geodesic(meters=i * STEP_M).destination((lat, lon), bearing)
        yield point.latitude, point.longitude


def _cell_runs(sent: list[str]) -> list[int]:
    """Lengths (in steps) of the runs of identical consecutive requests."""
    runs = [1]
    for previous, current in itertools.pairwise(sent):
        if current == previous:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


@pytest.mark.parametrize("where", sorted(LATITUDES))
@pytest.mark.parametrize("bearing", [0.0, 90.0], ids=["north", "east"])
def test_an_approximate_device_is_known_only_by_a_cell_3_km_wide(
    client: FlaskClient,
    nominatim: FakeNominatim,  # noqa: F811
    located: Callable[..., tuple[dict[str, Any], str]],  # noqa: F811
    where: str,
    bearing: float,
) -> None:
    _, token = located(location_permission="approximate")
    start = LATITUDES[where]
    sent: list[str] = []
    for lat, lon in _walk(*start, bearing):
        nominatim.clear()
        assert reverse(client, token, lat=lat, lon=lon).status_code == 200
        [request] = nominatim.recorded
        sent.append(everything_sent(request))
    runs = _cell_runs(sent)
    # The walk crossed cells, and every cell it crossed whole (not the first or last, which it
    # entered or left midway) held at least 3 km of it: nothing finer than that reached the
    # provider in any field of any request.
    assert len(runs) >= 2
    for run in runs[1:-1]:
        assert run * STEP_M >= MIN_CELL_M, runs


@pytest.mark.parametrize("where", sorted(LATITUDES))
def test_every_request_for_an_approximate_device_is_the_same_within_its_cell(
    client: FlaskClient,
    nominatim: FakeNominatim,  # noqa: F811
    located: Callable[..., tuple[dict[str, Any], str]],  # noqa: F811
    where: str,
) -> None:
    _, token = located(location_permission="approximate")
    lat, lon = LATITUDES[where]
    term = unique_term()
    # Points a few hundred metres apart around the start (all inside its cell: the start sits
    # near the middle of one, see the walk above), searched and reversed.
    points = [
        (lat + d_lat, lon + d_lon) for d_lat in (-0.004, 0.0, 0.004) for d_lon in (-0.004, 0.004)
    ]
    for point_lat, point_lon in points:
        assert (
            search(
                client, token, lat=point_lat, lon=point_lon, category=None, query=term
            ).status_code
            == 200
        )
        assert reverse(client, token, lat=point_lat, lon=point_lon).status_code == 200
    searches = {everything_sent(r) for r in nominatim.recorded if r.path == "/search"}
    reverses = {everything_sent(r) for r in nominatim.recorded if r.path == "/reverse"}
    assert len(searches) == 1 and len(reverses) == 1
    for text in searches | reverses:
        for exact in (f"{lat:.6f}", f"{lon:.6f}", f"{lat:.4f}", f"{lon:.4f}"):
            assert exact not in text
    # The viewbox is centred on the cell whose centre the reverse lookup sent.
    [search_request] = [r for r in nominatim.recorded if r.path == "/search"][:1]
    [reverse_request] = [r for r in nominatim.recorded if r.path == "/reverse"][:1]
    west, south, east, north = (
        float(v) for v in (search_request.param("viewbox") or "").split(",")
    )
    assert (south + north) / 2 == pytest.approx(
        float(reverse_request.param("lat") or "nan"), abs=1e-4
    )
    assert (west + east) / 2 == pytest.approx(
        float(reverse_request.param("lon") or "nan"), abs=1e-4
    )


@pytest.mark.parametrize("cache_ttl", [3600])
@pytest.mark.parametrize("where", sorted(LATITUDES))
def test_approximate_devices_in_one_cell_share_its_cache_entry(
    client: FlaskClient,
    nominatim: FakeNominatim,  # noqa: F811
    located: Callable[..., tuple[dict[str, Any], str]],  # noqa: F811
    where: str,
) -> None:
    lat, lon = LATITUDES[where]
    term = unique_term()
    first, second = (located(location_permission="approximate")[1] for _ in range(2))
    assert search(client, first, lat=lat, lon=lon, category=None, query=term).status_code == 200
    assert reverse(client, first, lat=lat, lon=lon).status_code == 200
    # Another device, 600 m away in the same cell: answered from the cell's cache entries.
    moved = geodesic(meters=600).destination((lat, lon), 45.0)
    here = {"lat": moved.latitude, "lon": moved.longitude}
    assert search(client, second, **here, category=None, query=term).status_code == 200
    assert reverse(client, second, **here).status_code == 200
    assert [r.path for r in nominatim.recorded] == ["/search", "/reverse"]


@pytest.mark.parametrize("cache_ttl", [3600])
def test_a_precise_device_keeps_location_precision_decimals(
    client: FlaskClient,
    nominatim: FakeNominatim,  # noqa: F811
    located: Callable[..., tuple[dict[str, Any], str]],  # noqa: F811
) -> None:
    _, precise = located(location_permission="precise")
    _, approximate = located(location_permission="approximate")
    lat, lon = LATITUDES["60N"]
    assert reverse(client, precise, lat=lat, lon=lon).status_code == 200
    assert reverse(client, approximate, lat=lat, lon=lon).status_code == 200
    # Not a cache hit for each other: the precise cell and the grid cell are different entries.
    precise_request, approximate_request = nominatim.recorded
    assert (precise_request.param("lat"), precise_request.param("lon")) == ("60.02", "10.79")
    assert approximate_request.param("lat") != precise_request.param("lat")


@pytest.mark.parametrize("hemisphere", [1.0, -1.0], ids=["north", "south"])
def test_grid_cells_are_at_least_3_km_wide_and_high_at_every_latitude(hemisphere: float) -> None:
    for degree in range(90):
        lat = hemisphere * (degree + 0.0123)
        cell = grid_cell(lat, 17.3)
        south, north = cell.lat - cell.half_height, cell.lat + cell.half_height
        poleward = max(south, north, key=abs)
        assert south <= lat < north
        height = WGS84.Inverse(south, cell.lon, north, cell.lon)["s12"]
        assert height >= MIN_CELL_M, (lat, height)
        if cell.half_width < 180.0:  # a polar cap is one cell all round
            west, east = cell.lon - cell.half_width, cell.lon + cell.half_width
            assert west <= 17.3 < east
            width = WGS84.Inverse(poleward, west, poleward, east)["s12"]
            assert width >= MIN_CELL_M, (lat, width)
