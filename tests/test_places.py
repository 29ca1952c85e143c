"""Places near me through the API, against a loopback Nominatim that records what it receives."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.services import places as places_service
from tests.conftest import REDIS_DEFAULT, bearer
from tests.fakes.nominatim_server import FakeNominatim
from tests.places_fixtures import (
    APP_USER_AGENT,
    LAT,
    LON,
    ROUNDED_LAT,
    ROUNDED_LON,
    app,
    device_token,
    everything_sent,
    located,
    nominatim,
    places_settings,
    raw_post,
    reverse,
    search,
)

__all__ = ["app", "device_token", "located", "nominatim", "places_settings"]

Located = Callable[..., tuple[dict[str, Any], str]]


# --- the answers ---------------------------------------------------------------------------------


def test_search_returns_places_nearest_first_with_attribution(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    response = search(client, device_token, limit=5)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) == {"places", "attribution"}
    assert "OpenStreetMap" in body["attribution"]
    places = body["places"]
    assert len(places) == 5
    assert {tuple(sorted(p)) for p in places} == {
        ("address", "category", "distance_m", "lat", "lon", "name")
    }
    distances = [p["distance_m"] for p in places]
    assert distances == sorted(distances)
    # The fake spreads its answers over the box in a scrambled order: the sort is ours.
    assert [p["name"] for p in places] != [f"Cafe {n}" for n in ("Alpha", "Bravo", "Charlie")]
    [sent] = nominatim.recorded
    assert sent.path == "/search"
    assert sent.param("q") == "cafe"
    # The most the provider gives, whatever the app asked: ranked and cut here.
    assert sent.param("limit") == "40"


def test_category_is_searched_by_its_phrase(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    assert search(client, device_token, category="post_office").status_code == 200
    assert nominatim.recorded[0].param("q") == "post office"


def test_free_query_is_forwarded_instead_of_a_category(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    response = search(client, device_token, category=None, query="  Vegan   Bakery ")
    assert response.status_code == 200, response.get_json()
    assert nominatim.recorded[0].param("q") == "vegan bakery"


def test_reverse_names_the_area_without_street_or_number(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    response = reverse(client, device_token)

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "area": {
            "city": "Berlin",
            "district": "Mitte",
            "region": "Berlin",
            "country": "Deutschland",
            "country_code": "DE",
        }
    }
    assert "Teststraße" not in response.get_data(as_text=True)
    [sent] = nominatim.recorded
    assert sent.path == "/reverse"
    # Zoom 12-14 is town/suburb level: Nominatim resolves no street or building there.
    assert int(sent.param("zoom") or 18) <= 14


# --- consent gate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location_services", "location_permission"),
    [
        (False, "precise"),
        (False, "approximate"),
        (True, "denied"),
        (True, "not_determined"),
        (True, None),
        (False, None),
    ],
)
@pytest.mark.parametrize("send", [search, reverse])
def test_without_location_consent_nothing_is_sent(
    client: FlaskClient,
    located: Located,
    nominatim: FakeNominatim,
    location_services: bool,
    location_permission: str | None,
    send: Callable[..., Any],
) -> None:
    _, token = located(location_services, location_permission)

    response = send(client, token)

    assert response.status_code == 403
    assert response.get_json()["error"] == "location_consent_required"
    assert nominatim.recorded == []


def test_approximate_permission_is_enough(
    client: FlaskClient, located: Located, nominatim: FakeNominatim
) -> None:
    _, token = located(True, "approximate")
    assert search(client, token).status_code == 200
    assert len(nominatim.recorded) == 1


def test_consent_withdrawn_on_the_device_stops_lookups_at_once(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    assert reverse(client, device_token).status_code == 200
    client.patch(
        "/v1/devices/me", json={"location_permission": "denied"}, headers=bearer(device_token)
    )

    response = search(client, device_token, category="bank")

    assert response.status_code == 403
    assert [r.path for r in nominatim.recorded] == ["/reverse"]


def test_places_need_a_device_token(
    client: FlaskClient, make_key: Callable[[str], str], nominatim: FakeNominatim
) -> None:
    assert search(client, "").status_code == 401
    assert search(client, "dt_not-a-real-token-at-all-000000").status_code == 401
    response = search(client, make_key("marketing"))
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert nominatim.recorded == []


# --- minimisation: what the provider receives ---------------------------------------------------


def test_reverse_sends_only_the_rounded_point(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    assert reverse(client, device_token).status_code == 200

    [sent] = nominatim.recorded
    assert sent.param("lat") == ROUNDED_LAT
    assert sent.param("lon") == ROUNDED_LON
    assert "137154" not in everything_sent(sent)
    assert "576124" not in everything_sent(sent)


def test_search_box_is_built_around_the_rounded_point(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    assert search(client, device_token).status_code == 200

    [sent] = nominatim.recorded
    west, south, east, north = (float(v) for v in (sent.param("viewbox") or "").split(","))
    assert (south + north) / 2 == pytest.approx(float(ROUNDED_LAT), abs=1e-3)
    assert (west + east) / 2 == pytest.approx(float(ROUNDED_LON), abs=1e-3)
    assert sent.param("bounded") == "1"
    assert "137154" not in everything_sent(sent)
    assert "576124" not in everything_sent(sent)


def test_nearby_points_in_one_cell_send_the_same_request(
    app_factory: Callable[..., Flask],
    places_settings: dict[str, Any],
    nominatim: FakeNominatim,
    device_token: str,
) -> None:
    """Two users a few hundred metres apart are indistinguishable to the provider."""
    for lat, lon in ((48.1371, 11.5761), (48.1412, 11.5789)):
        # A fresh app each time: a fresh cache, so both lookups go upstream.
        other = app_factory(**places_settings).test_client()
        assert search(other, device_token, lat=lat, lon=lon).status_code == 200
    first, second = nominatim.recorded
    assert first.query == second.query


@pytest.mark.parametrize(
    ("decimals", "expected"), [(1, ("48.1", "11.6")), (3, ("48.137", "11.576"))]
)
def test_precision_follows_the_setting(
    app_factory: Callable[..., Flask],
    places_settings: dict[str, Any],
    nominatim: FakeNominatim,
    device_token: str,
    decimals: int,
    expected: tuple[str, str],
) -> None:
    client = app_factory(**places_settings, LOCATION_PRECISION_DECIMALS=decimals).test_client()

    assert reverse(client, device_token).status_code == 200

    sent = nominatim.recorded[0]
    assert (sent.param("lat"), sent.param("lon")) == expected


def test_nothing_identifying_reaches_the_provider(
    client: FlaskClient, located: Located, nominatim: FakeNominatim
) -> None:
    device, token = located(account_id="acct-4711-helpdesk", device_model="Pixel 8 Pro")
    client_headers = {
        "User-Agent": "HelpdeskApp/5.2 (Android 14; Pixel 8 Pro)",
        "X-Forwarded-For": "203.0.113.77",
        "Forwarded": "for=203.0.113.77",
        "Cookie": "session=cookie-value-1234",
        "Referer": "https://app.example.com/places?from=home",
        "X-Request-ID": "request-id-abcdef12",
        "Accept-Language": "id-ID",
    }

    assert search(client, token, headers=client_headers).status_code == 200
    # The fake sets a cookie on every answer: a second request must not return it.
    assert reverse(client, token, headers=client_headers).status_code == 200

    assert len(nominatim.recorded) == 2
    forbidden = [
        device["id"],
        device["installation_id"],
        token,
        "acct-4711",
        "Pixel",
        "HelpdeskApp",
        "203.0.113.77",
        "cookie-value",
        "nominatim_session",
        "app.example.com",
        "request-id-abcdef12",
        "id-ID",
    ]
    for sent in nominatim.recorded:
        assert sent.header("User-Agent") == APP_USER_AGENT
        for header in ("Cookie", "Referer", "X-Forwarded-For", "Forwarded", "Authorization"):
            assert sent.header(header) is None, header
        text = everything_sent(sent)
        for value in forbidden:
            assert value not in text, value


# --- caching -------------------------------------------------------------------------------------


def test_a_cache_hit_sends_nothing_and_ranks_from_the_exact_point(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    first = search(client, device_token, lat=48.1371, lon=11.5761)
    second = search(client, device_token, lat=48.1419, lon=11.5768)  # same 0.01° cell

    assert first.status_code == second.status_code == 200
    assert len(nominatim.recorded) == 1
    names = {p["name"] for p in first.get_json()["places"]}
    assert names == {p["name"] for p in second.get_json()["places"]}
    # Same places, distances measured from each user's own exact point.
    assert first.get_json()["places"] != second.get_json()["places"]


def test_one_cache_entry_serves_every_limit(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    three = search(client, device_token, limit=3).get_json()["places"]
    seven = search(client, device_token, limit=7).get_json()["places"]

    assert len(three) == 3
    assert len(seven) == 7
    assert seven[:3] == three
    assert len(nominatim.recorded) == 1


def test_reverse_is_cached_per_cell_too(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    assert reverse(client, device_token).status_code == 200
    assert reverse(client, device_token, lat=48.1351, lon=11.5849).status_code == 200
    assert len(nominatim.recorded) == 1


# --- provider faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "error", "retry_after"),
    [
        ({"status": 429, "retry_after": "7"}, 503, "mapping_provider_unavailable", "7"),
        ({"status": 503, "retry_after": "12"}, 503, "mapping_provider_unavailable", "12"),
        ({"status": 503}, 503, "mapping_provider_unavailable", "30"),
        ({"status": 500}, 502, "mapping_provider_error", None),
        ({"status": 400}, 502, "mapping_provider_error", None),
        ({"garbage": True}, 502, "mapping_provider_error", None),
    ],
)
@pytest.mark.parametrize("send", [search, reverse])
def test_provider_faults_map_to_api_errors(
    client: FlaskClient,
    device_token: str,
    nominatim: FakeNominatim,
    fault: dict[str, Any],
    status: int,
    error: str,
    retry_after: str | None,
    send: Callable[..., Any],
) -> None:
    nominatim.behave(**fault)

    response = send(client, device_token)

    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == error
    assert body["code"] == status
    if retry_after is not None:
        assert response.headers["Retry-After"] == retry_after
    # The provider's error page quotes its URL; none of it reaches our client.
    assert "failed:" not in response.get_data(as_text=True)
    assert len(nominatim.recorded) == 1


def test_a_slow_provider_times_out_as_504(
    app_factory: Callable[..., Flask],
    places_settings: dict[str, Any],
    nominatim: FakeNominatim,
    device_token: str,
) -> None:
    client = app_factory(**{**places_settings, "GEOCODER_TIMEOUT": 0.3}).test_client()
    nominatim.behave(delay=1.0)

    response = search(client, device_token)

    assert response.status_code == 504
    assert response.get_json()["error"] == "mapping_provider_timeout"


def test_a_body_that_stalls_after_late_headers_times_out_at_the_deadline(
    app_factory: Callable[..., Flask],
    places_settings: dict[str, Any],
    nominatim: FakeNominatim,
    device_token: str,
) -> None:
    client = app_factory(**{**places_settings, "GEOCODER_TIMEOUT": 1.0}).test_client()
    # Headers at 0.7 s, then the body one byte every 2 s: each step is within the timeout
    # on its own, so only a deadline for the whole lookup stops it at 1 s.
    nominatim.behave(delay=0.7, trickle=2.0)

    started = time.monotonic()
    response = search(client, device_token)
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert response.get_json()["error"] == "mapping_provider_timeout"
    assert elapsed < 1.4  # not 1.7: the delay plus a whole timeout for the stalled read
    assert len(nominatim.recorded) == 1


def test_a_failure_is_not_cached(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    nominatim.fail(500, times=1)
    assert search(client, device_token).status_code == 502

    response = search(client, device_token)  # waits out the 1 request/s budget, then retries

    assert response.status_code == 200
    assert len(response.get_json()["places"]) > 0
    assert len(nominatim.recorded) == 2


def test_requests_beyond_the_provider_budget_are_refused_not_queued(
    app_factory: Callable[..., Flask],
    places_settings: dict[str, Any],
    nominatim: FakeNominatim,
    device_token: str,
) -> None:
    """With a deadline shorter than the 1 request/s spacing, a second miss cannot wait its turn."""
    # A long spacing, so a slow first request on a loaded machine cannot free the slot.
    client = app_factory(
        **{**places_settings, "GEOCODER_TIMEOUT": 0.4, "GEOCODER_MIN_INTERVAL": 30.0}
    ).test_client()
    assert search(client, device_token).status_code == 200

    response = search(client, device_token, category="bank")

    assert response.status_code == 503
    assert response.get_json()["error"] == "mapping_provider_unavailable"
    # Retry-After says when the next slot frees up.
    assert 28 <= int(response.headers["Retry-After"]) <= 30
    assert len(nominatim.recorded) == 1


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"lat": 90.0001}, "lat"),
        ({"lat": -91}, "lat"),
        ({"lon": 180.5}, "lon"),
        ({"lon": -181}, "lon"),
        ({"lat": "48.13"}, "lat"),
        ({"lon": True}, "lon"),
        ({"lat": None}, "lat"),
        ({"lon": [11.5]}, "lon"),
        ({"category": "brothel"}, "category"),
        ({"category": None, "query": None}, "category"),
        ({"query": "cafe"}, "category"),
        ({"category": None, "query": "   "}, "query"),
        ({"category": None, "query": "x" * 101}, "query"),
        ({"category": None, "query": "cafe\nINFO forged"}, "query"),
        ({"limit": 0}, "limit"),
        ({"limit": 41}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"device_id": "x"}, "device_id"),
    ],
)
def test_search_rejects_invalid_bodies(
    client: FlaskClient,
    device_token: str,
    nominatim: FakeNominatim,
    body: dict[str, Any],
    field: str,
) -> None:
    payload: dict[str, Any] = {"lat": LAT, "lon": LON, "category": "cafe", **body}
    payload = {k: v for k, v in payload.items() if v is not None or k in ("lat", "lon")}
    if body.get("category", "") is None:
        payload.pop("category", None)

    response = client.post("/v1/places/search", json=payload, headers=bearer(device_token))

    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"]
    assert nominatim.recorded == []


@pytest.mark.parametrize(
    "text",
    [
        '{"lat": NaN, "lon": 11.5}',
        '{"lat": 48.1, "lon": Infinity}',
        '{"lat": -Infinity, "lon": 11.5}',
        '{"lat": 1e400, "lon": 11.5}',
        '{"lat": 48.1, "lon": ' + "9" * 400 + "}",
        '{"lon": 11.5}',
        "{}",
    ],
)
@pytest.mark.parametrize("path", ["/v1/places/search", "/v1/places/reverse"])
def test_only_finite_numbers_are_coordinates(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim, text: str, path: str
) -> None:
    if path.endswith("search"):
        text = text[:-1] + (', "category": "cafe"}' if text != "{}" else '"category": "cafe"}')

    response = raw_post(client, path, device_token, text)

    assert response.status_code == 422, response.get_json()
    assert nominatim.recorded == []


def test_coordinates_in_the_url_are_not_accepted(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    # A valid body from a consenting device: only the query string is refused.
    for path, body in (
        ("/v1/places/reverse", {"lat": LAT, "lon": LON}),
        ("/v1/places/search", {"lat": LAT, "lon": LON, "category": "cafe"}),
    ):
        response = client.post(
            f"{path}?lat={LAT}&lon={LON}", json=body, headers=bearer(device_token)
        )
        assert response.status_code == 422
        assert set(response.get_json()["errors"]["query"]) == {"lat", "lon"}
        assert str(LAT) not in response.get_data(as_text=True)
    assert client.get("/v1/places/reverse", headers=bearer(device_token)).status_code == 405
    assert nominatim.recorded == []


def test_validation_errors_do_not_echo_coordinates(client: FlaskClient, device_token: str) -> None:
    response = search(client, device_token, lat=123.456789)
    assert response.status_code == 422
    assert "123.456789" not in response.get_data(as_text=True)


# --- rate limit, docs ----------------------------------------------------------------------------


def test_each_device_is_rate_limited(
    app_factory: Callable[..., Flask],
    places_settings: dict[str, Any],
    nominatim: FakeNominatim,
    located: Located,
) -> None:
    client = app_factory(**places_settings, RATELIMIT_PLACES="2 per minute").test_client()
    token, other = located()[1], located()[1]

    assert [search(client, token).status_code for _ in range(3)] == [200, 200, 429]
    assert search(client, other).status_code == 200  # another device has its own budget
    assert len(nominatim.recorded) == 1  # the rest were cache hits


def test_the_openapi_document_describes_places(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    search_doc = spec["paths"]["/v1/places/search"]["post"]
    assert {"200", "401", "403", "422", "429", "502", "503", "504"} <= set(search_doc["responses"])
    assert "/v1/places/reverse" in spec["paths"]
    categories = spec["components"]["schemas"]["PlaceSearch"]["properties"]["category"]
    assert "cafe" in categories["enum"]


# --- deployment-wide state in Redis ---------------------------------------------------------------


@pytest.fixture
def redis_settings(places_settings: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Places settings on the local Redis, under a key prefix of this test's own."""
    url = os.environ.get("TEST_REDIS_URL", REDIS_DEFAULT)
    prefix = f"mobile_api_test:{uuid.uuid4().hex[:12]}:geo:"
    connection = redis.Redis.from_url(url)
    try:
        connection.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    yield {**places_settings, "REDIS_URL": url, "PLACES_REDIS_PREFIX": prefix}
    keys = list(connection.scan_iter(match=f"{prefix}*"))
    if keys:
        connection.delete(*keys)
    connection.close()


@pytest.mark.redis
def test_with_redis_the_cache_is_shared_by_every_process(
    app_factory: Callable[..., Flask],
    redis_settings: dict[str, Any],
    nominatim: FakeNominatim,
    device_token: str,
) -> None:
    first = app_factory(**redis_settings).test_client()
    second = app_factory(**redis_settings).test_client()  # another worker of the deployment

    assert search(first, device_token).status_code == 200
    response = search(second, device_token, lat=48.1402, lon=11.5833)

    assert response.status_code == 200
    assert len(response.get_json()["places"]) > 0
    assert len(nominatim.recorded) == 1


@pytest.mark.redis
def test_with_redis_the_provider_budget_is_shared_by_every_process(
    app_factory: Callable[..., Flask],
    redis_settings: dict[str, Any],
    nominatim: FakeNominatim,
    device_token: str,
) -> None:
    # A long spacing, so a slow first request on a loaded machine cannot free the slot.
    settings = {**redis_settings, "GEOCODER_TIMEOUT": 0.4, "GEOCODER_MIN_INTERVAL": 30.0}
    first = app_factory(**settings).test_client()
    second = app_factory(**settings).test_client()

    assert search(first, device_token).status_code == 200
    response = search(second, device_token, category="bank")  # a miss within the same second

    assert response.status_code == 503
    assert response.get_json()["error"] == "mapping_provider_unavailable"
    assert len(nominatim.recorded) == 1


@pytest.mark.redis
def test_with_redis_and_no_spacing_every_miss_goes_through(
    app_factory: Callable[..., Flask],
    redis_settings: dict[str, Any],
    nominatim: FakeNominatim,
    device_token: str,
) -> None:
    # GEOCODER_MIN_INTERVAL=0 (a self-hosted provider) must not make the shared
    # limiter refuse every lookup.
    client = app_factory(**{**redis_settings, "GEOCODER_MIN_INTERVAL": 0}).test_client()
    assert search(client, device_token).status_code == 200
    assert search(client, device_token, category="bank").status_code == 200
    assert len(nominatim.recorded) == 2


@pytest.mark.parametrize(
    ("hint", "header"),
    [(None, 30), (float("inf"), 30), (0.0, 1), (0.2, 1), (7.0, 7), (7.1, 8), (1e9, 3600)],
)
def test_retry_after_is_whole_bounded_seconds(hint: float | None, header: int) -> None:
    assert places_service._retry_after(hint) == header
