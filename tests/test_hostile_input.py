"""Hostile input over HTTP, with every role, on SQLite and PostgreSQL: never a 5xx.

The named cases are those a probe found answering 500; the generated ones send
bodies, path segments and query values that no schema describes (any JSON, nested
at any depth, strings with NUL bytes or unpaired surrogates, out-of-range numbers)
to every operation of the published document. Whatever they send, the answer is a
4xx (or a success) in the error shape of API.md, and no identifier reaches a log.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobile_api.extensions import db
from mobile_api.observability import JsonFormatter
from mobile_api.pagination import encode_cursor
from mobile_api.services import devices as device_service
from mobile_api.services import keys as key_service
from tests.campaign_fixtures import campaign_body
from tests.conftest import bearer, device_body, make_app, migrate_once, wipe
from tests.telemetry_fixtures import EVENTS, event

ROLES = ("app", "device", "marketing", "support", "privacy", "admin")


class World(NamedTuple):
    """An app on one database with a credential of every role and one of each resource."""

    app: Flask
    client: FlaskClient
    headers: dict[str, dict[str, str]]
    device_id: str
    account_id: str
    campaign_id: str


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    """The hostile-input target on the suite's database (SQLite, or DATABASE_URL's)."""
    app = make_app(database_url, RATELIMIT_ENABLED=False, GEOCODER_TIMEOUT=0.5)
    migrate_once(app)
    account_id = "acct-hostile-7f3a9c"
    with app.app_context():
        headers = {
            role: bearer(key_service.create(db.session, role, f"hostile {role}")[1])
            for role in ROLES
            if role != "device"
        }
        registered = device_service.register(
            db.session, device_body(account_id=account_id, push_token="tok-hostile"), None
        )
        headers["device"] = bearer(registered.device_token)
    client = app.test_client()
    device_id = client.get("/v1/devices/me", headers=headers["device"]).get_json()["id"]
    campaign = client.post("/v1/campaigns", json=campaign_body(), headers=headers["marketing"])
    assert campaign.status_code == 201, campaign.get_json()
    yield World(app, client, headers, device_id, account_id, campaign.get_json()["id"])
    wipe(app)


def assert_refused_in_shape(response: Any, *statuses: int) -> dict[str, Any]:
    """A 4xx (one of `statuses` if given) whose body is API.md's error shape."""
    assert response.status_code < 500, (response.status_code, response.get_data()[:500])
    if statuses:
        assert response.status_code in statuses, response.get_json()
    body: dict[str, Any] = response.get_json()
    assert body["code"] == response.status_code
    assert isinstance(body["status"], str) and isinstance(body["message"], str)
    return body


def nested(depth: int) -> str:
    """JSON text of a number inside `depth` alternating lists and objects.

    Written out directly: json.dumps itself gives up at about a thousand levels.
    """
    opening = "".join("[" if level % 2 else '{"k": ' for level in range(depth))
    closing = "".join("]" if level % 2 else "}" for level in reversed(range(depth)))
    return opening + "1" + closing


_DEEP = re.compile(r'"\\u0001deep:(\d+)\\u0001"')


def dumps(value: Any) -> str:
    """JSON text of `value`, where strings made by `deep()` become deeply nested values."""
    return _DEEP.sub(lambda m: nested(int(m.group(1))), json.dumps(value))


def deep(depth: int) -> str:
    """A placeholder `dumps()` writes out as a value nested `depth` levels."""
    return f"\x01deep:{depth}\x01"


def post_raw(world: World, path: str, text: str, role: str, method: str = "post") -> Any:
    return world.client.open(
        path,
        method=method.upper(),
        data=text.encode(),
        headers={**world.headers[role], "Content-Type": "application/json"},
    )


# -- the named cases --------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 1000, 100_000])
def test_deeply_nested_json_is_refused(world: World, depth: int) -> None:
    properties = {"p": deep(depth)}
    for path, role, body in [
        (EVENTS, "device", {"events": [event(properties=properties)]}),
        ("/v1/campaigns", "marketing", campaign_body(data=properties)),
        ("/v1/devices", "app", deep(depth)),
    ]:
        response = post_raw(world, path, dumps(body), role)
        assert "nested" in assert_refused_in_shape(response, 400)["message"]


def test_lone_surrogates_are_refused(world: World) -> None:
    cases = [
        ("/v1/devices/me", "device", "patch", {"device_model": "\ud800"}),
        (EVENTS, "device", "post", {"events": [event(properties={"p": "\ud800"})]}),
        (EVENTS, "device", "post", {"events": [event(properties={"\udc00": 1})]}),
        ("/v1/campaigns", "marketing", "post", campaign_body(title="x\ud800")),
        ("/v1/devices/me", "device", "patch", {"\ud800": "x"}),
    ]
    for path, role, method, body in cases:
        response = post_raw(world, path, dumps(body), role, method)
        assert assert_refused_in_shape(response, 422)["errors"]["json"], body
    device = world.client.get("/v1/devices/me", headers=world.headers["device"]).get_json()
    assert device["device_model"] is None
    # A surrogate pair is one valid character (an emoji), not an unpaired surrogate.
    response = post_raw(world, "/v1/devices/me", dumps({"device_model": "📱"}), "device", "patch")
    assert response.status_code == 200
    assert response.get_json()["device_model"] == "📱"


def test_numbers_with_a_fraction_are_not_truncated_into_integers(world: World) -> None:
    for body in (
        campaign_body(ttl_seconds=2.5890419884777833e-42),
        campaign_body(ttl_seconds=3600.5),
        campaign_body(audience={"last_seen_within_days": 1.5}),
    ):
        response = world.client.post("/v1/campaigns", json=body, headers=world.headers["marketing"])
        assert assert_refused_in_shape(response, 422)["errors"]["json"], body


def test_an_image_url_that_does_not_parse_is_refused(world: World) -> None:
    # urlsplit() raises on an IPv6 host whose bracket is left open; that was a 500.
    for url in ("https://[", "https://[::1/a.png", "https://]"):
        response = world.client.post(
            "/v1/campaigns", json=campaign_body(image_url=url), headers=world.headers["marketing"]
        )
        assert assert_refused_in_shape(response, 422)["errors"]["json"]["image_url"], url


def test_out_of_range_cursors_are_invalid_cursors(world: World) -> None:
    lists = [
        ("/v1/devices/me/consents", "device"),
        ("/v1/admin/audit", "support"),
        (f"/v1/campaigns/{world.campaign_id}/deliveries", "marketing"),
        ("/v1/admin/devices", "support"),
    ]
    for path, role in lists:
        for value in (10**30, -(10**30), 2**63, "a\x00b", "\ud800", 1.5, None, [1]):
            cursor = encode_cursor(value) if value != "\ud800" else "WyJcdWQ4MDAiXQ"
            response = world.client.get(
                path, query_string={"cursor": cursor}, headers=world.headers[role]
            )
            body = assert_refused_in_shape(response, 422)
            assert body["error"] == "invalid_cursor", (path, value)


def test_nul_bytes_in_path_parameters_are_not_found(world: World) -> None:
    for method, path, role in [
        ("GET", "/v1/admin/accounts/a%00b/export", "privacy"),
        ("POST", "/v1/admin/accounts/a%00b/terminate", "privacy"),
        ("GET", "/v1/admin/devices/a%00b/export", "privacy"),
        ("GET", "/v1/campaigns/a%00b", "marketing"),
        ("POST", "/v1/campaigns/a%00b/send", "marketing"),
        ("GET", f"/v1/campaigns/{world.campaign_id}/explain/a%00b", "marketing"),
        ("GET", "/v1/campaigns/%ED%A0%80", "marketing"),
    ]:
        response = world.client.open(path, method=method, headers=world.headers[role])
        assert assert_refused_in_shape(response, 404)["error"] == "not_found", path


def test_nul_bytes_in_query_values_and_telemetry_properties_are_refused(world: World) -> None:
    response = world.client.get(
        "/v1/admin/devices", query_string={"account_id": "a\x00b"}, headers=world.headers["support"]
    )
    assert assert_refused_in_shape(response, 422)["errors"]["query"]["account_id"]
    response = world.client.post(
        EVENTS,
        json={"events": [event(properties={"screen": "a\x00b"})]},
        headers=world.headers["device"],
    )
    assert assert_refused_in_shape(response, 422)["errors"]["json"]


def test_error_paths_log_no_identifier(world: World, caplog: pytest.LogCaptureFixture) -> None:
    secret_id = "acct-0042-ZZTOP"
    # An app that answers as in production: a bug is a 500, not an exception in the test.
    buggy = make_app(world.app.config["SQLALCHEMY_DATABASE_URI"], PROPAGATE_EXCEPTIONS=False)

    @buggy.get("/boom/<identifier>")
    def boom(identifier: str) -> None:
        raise ValueError(f"cannot handle {identifier}")

    caplog.set_level(logging.DEBUG)
    world.client.get(f"/v1/admin/accounts/{secret_id}%00/export", headers=world.headers["privacy"])
    world.client.get(f"/v1/campaigns/{secret_id}%00", headers=world.headers["marketing"])
    response = buggy.test_client().get(f"/boom/{secret_id}")
    assert response.status_code == 500
    assert response.get_json()["code"] == 500
    assert any(record.levelno >= logging.ERROR for record in caplog.records)
    formatter = JsonFormatter()
    for record in caplog.records:
        assert secret_id not in formatter.format(record), record.name


def test_a_body_not_declared_json_is_415(world: World) -> None:
    response = world.client.post(
        "/v1/devices",
        data=json.dumps(device_body()),
        headers={**world.headers["app"], "Content-Type": "text/plain"},
    )
    body = assert_refused_in_shape(response, 415)
    assert body["message"] == "Send the body as application/json."
    response = world.client.post(
        "/v1/devices", data=json.dumps(device_body()), headers=world.headers["app"]
    )
    assert assert_refused_in_shape(response, 415)["code"] == 415


def test_bodiless_posts_stay_valid(world: World) -> None:
    marketing = world.headers["marketing"]
    campaign = f"/v1/campaigns/{world.campaign_id}"
    assert world.client.post(f"{campaign}/preview", headers=marketing).status_code == 200
    response = world.client.post(
        f"/v1/admin/devices/{world.device_id}/enable", headers=world.headers["support"]
    )
    assert response.status_code == 200
    assert world.client.post(f"{campaign}/send", headers=marketing).status_code == 202
    assert world.client.post(f"{campaign}/cancel", headers=marketing).status_code in (200, 409)


def test_an_unknown_route_is_not_found_in_the_error_shape(world: World) -> None:
    for path in ("/nope", "/v1/devices/me/nope", "/v1/%00"):
        body = assert_refused_in_shape(world.client.get(path), 404)
        assert body["error"] == "not_found"


# -- generated input, every operation, every role -----------------------------------

_SPECIAL_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff\ud800",
    "\u202e",
    "%00",
    "../../etc/passwd",
    "A" * 5000,
    "0" * 26,
    "<img src=x onerror=alert(1)>",
    "1e999",
    "-0",
    "Europe/Nowhere",
]
hostile_strings = st.one_of(
    st.sampled_from(_SPECIAL_STRINGS),
    st.text(st.characters(exclude_categories=()), max_size=40),
)
hostile_scalars = st.one_of(
    hostile_strings,
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([2**63, -(2**63) - 1, 2**31, float("nan"), float("inf"), 1e308, -0.0]),
    st.floats(),
    st.booleans(),
    st.none(),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(hostile_strings, inner, max_size=4)


hostile_json = st.one_of(
    st.recursive(hostile_scalars, _containers, max_leaves=12),
    st.integers(min_value=30, max_value=3000).map(deep),
)


def _operations(document: dict[str, Any], role: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The operations `role` may call (x-roles; admin keys pass every staff check)."""

    def admits(roles: list[str]) -> bool:
        return not roles or role in roles or (role == "admin" and "device" not in roles)

    return [
        (method, path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if method in ("get", "post", "put", "patch", "delete")
        and admits(operation.get("x-roles", []))
    ]


def _body_fields(document: dict[str, Any], operation: dict[str, Any]) -> list[str]:
    """The top-level field names of an operation's JSON body, if it has one."""
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    if ref:
        schema = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return sorted(schema.get("properties", {}))


def _quote(value: Any) -> str:
    return urllib.parse.quote(str(value).encode("utf-8", "surrogatepass"), safe="")


@st.composite
def hostile_requests(
    draw: Any, document: dict[str, Any], world: World, role: str
) -> dict[str, Any]:
    """One request to an operation `role` may call: real or hostile ids, query and body."""
    method, path, operation = draw(st.sampled_from(_operations(document, role)))
    real = {
        "device_id": world.device_id,
        "account_id": world.account_id,
        "campaign_id": world.campaign_id,
    }
    for name, value in real.items():
        if "{" + name + "}" in path:
            segment = draw(st.one_of(st.just(value), hostile_strings.filter(bool)))
            path = path.replace("{" + name + "}", _quote(segment))
    query_names = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]
    query = {}
    if query_names:
        query = draw(st.dictionaries(st.sampled_from(query_names), hostile_scalars, max_size=3))
    if query:
        path += "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query.items())
    fields = _body_fields(document, operation)
    if fields and draw(st.booleans()):
        body: Any = draw(st.dictionaries(st.sampled_from(fields), hostile_json, max_size=4))
    else:
        body = draw(hostile_json)
    return {"method": method.upper(), "path": path, "data": dumps(body).encode()}


@pytest.mark.parametrize("role", ROLES)
def test_generated_hostile_requests_are_never_server_errors(world: World, role: str) -> None:
    document = world.client.get("/openapi.json").get_json()

    @given(request=hostile_requests(document, world, role))
    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def probe(request: dict[str, Any]) -> None:
        response = world.client.open(
            request["path"],
            method=request["method"],
            data=request["data"],
            headers={**world.headers[role], "Content-Type": "application/json"},
        )
        if response.status_code >= 400:
            assert_refused_in_shape(response)

    probe()


def test_hostile_device_fields_leave_the_device_as_it_was(world: World) -> None:
    # A refused update changes nothing, on either database.
    before = world.client.get("/v1/devices/me", headers=world.headers["device"]).get_json()
    for value in ("a\x00b", "\ud800", 10**30, deep(2000)):
        for field in ("device_model", "os_version", "time_zone", "locale", "app_version"):
            response = post_raw(world, "/v1/devices/me", dumps({field: value}), "device", "patch")
            assert_refused_in_shape(response, 400, 422)
    after = world.client.get("/v1/devices/me", headers=world.headers["device"]).get_json()
    assert {k: v for k, v in after.items() if k != "last_seen_at"} == {
        k: v for k, v in before.items() if k != "last_seen_at"
    }


def test_database_errors_quote_no_parameters(world: World) -> None:
    # Workers and periodic jobs log exceptions too: their messages must not carry ids.
    secret_id = "acct-0042-ZZTOP"
    statement = sa.text("SELECT no_such_column FROM devices WHERE id = :id")
    with world.app.app_context(), pytest.raises(sa.exc.DBAPIError) as failure:
        db.session.execute(statement, {"id": secret_id})
    assert secret_id not in str(failure.value)
