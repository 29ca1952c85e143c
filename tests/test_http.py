"""The HTTP surface: error shape, rate limits, headers, health, metrics, OpenAPI."""

from __future__ import annotations

import pytest

from tests.conftest import bearer, device_body

ERROR_KEYS = {"code", "status", "message"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/nowhere", 404),
        ("get", "/v1/devices/me/nothing-here", 404),
        ("delete", "/v1/devices", 405),
        ("put", "/healthz", 405),
    ],
)
def test_routing_errors_have_the_one_shape(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.is_json
    body = response.get_json()
    assert set(body) >= ERROR_KEYS
    assert body["code"] == status
    if status == 405:
        assert response.headers["Allow"]


def test_malformed_json_is_400_in_the_one_shape(client, app_key):
    response = client.post(
        "/v1/devices",
        data='{"installation_id": ',
        headers={**bearer(app_key), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == 400
    assert body["errors"] == {"json": ["Invalid JSON body."]}


@pytest.mark.parametrize("payload", ["[]", '"text"', "42", "null"])
def test_non_object_bodies_are_refused(client, app_key, payload):
    response = client.post(
        "/v1/devices",
        data=payload,
        headers={**bearer(app_key), "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 422)
    assert set(response.get_json()) >= ERROR_KEYS


def test_unknown_fields_are_rejected_not_ignored(client, app_key):
    response = client.post("/v1/devices", json=device_body(gps_lat=1.5), headers=bearer(app_key))
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"] == {"gps_lat": ["Unknown field."]}


def test_oversized_body_is_413(client, app_key):
    response = client.post(
        "/v1/devices",
        data='{"x": "' + "a" * (2 * 1024 * 1024) + '"}',
        headers={**bearer(app_key), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.get_json()["code"] == 413


def test_unhandled_errors_are_500_in_the_one_shape(app, client, app_key, monkeypatch):
    from mobile_api.services import devices

    def explode(*args, **kwargs):
        raise RuntimeError("boom with a secret dt_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345")

    monkeypatch.setattr(devices, "register", explode)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.post("/v1/devices", json=device_body(), headers=bearer(app_key))
    assert response.status_code == 500
    body = response.get_json()
    assert body["code"] == 500
    assert "boom" not in body["message"]


def test_registration_is_rate_limited_per_ip_with_retry_after(app_factory, make_key):
    app = app_factory(RATELIMIT_REGISTRATION="2 per minute")
    client = app.test_client()
    with app.app_context():
        from mobile_api.extensions import db
        from mobile_api.services import keys

        _, secret = keys.create(db.session, "app", "limited")
    statuses = [
        client.post("/v1/devices", json=device_body(), headers=bearer(secret)).status_code
        for _ in range(2)
    ]
    assert statuses == [201, 201]
    limited = client.post("/v1/devices", json=device_body(), headers=bearer(secret))
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    body = limited.get_json()
    assert body["code"] == 429
    assert body["status"] == "Too Many Requests"
    assert body["error"] == "rate_limited"
    # Another client IP is not affected.
    other = client.post(
        "/v1/devices",
        json=device_body(),
        headers=bearer(secret),
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert other.status_code == 201


def test_device_endpoints_are_limited_per_device(app_factory):
    app = app_factory(RATELIMIT_DEVICE="3 per minute")
    client = app.test_client()
    with app.app_context():
        from mobile_api.extensions import db
        from mobile_api.services import keys

        _, secret = keys.create(db.session, "app", "limited")
    tokens = [
        client.post("/v1/devices", json=device_body(), headers=bearer(secret)).get_json()[
            "device_token"
        ]
        for _ in range(2)
    ]
    responses = [client.get("/v1/devices/me", headers=bearer(tokens[0])) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    # Retry-After only where it means something: on the refusal.
    assert "Retry-After" not in responses[0].headers
    assert 0 < int(responses[3].headers["Retry-After"]) <= 61  # whole seconds, rounded up
    # The other device, same IP, still gets through.
    assert client.get("/v1/devices/me", headers=bearer(tokens[1])).status_code == 200


def test_rate_limits_can_be_switched_off(app_factory, make_key):
    app = app_factory(RATELIMIT_ENABLED=False, RATELIMIT_REGISTRATION="1 per minute")
    client = app.test_client()
    with app.app_context():
        from mobile_api.extensions import db
        from mobile_api.services import keys

        _, secret = keys.create(db.session, "app", "unlimited")
    for _ in range(3):
        assert (
            client.post("/v1/devices", json=device_body(), headers=bearer(secret)).status_code
            == 201
        )


def test_security_headers(client, register):
    _, token = register()
    response = client.get("/v1/devices/me", headers=bearer(token))
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert len(response.headers["X-Request-ID"]) >= 8


def test_request_id_is_echoed_when_sane(client):
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc12345"}).headers["X-Request-ID"]
        == "abc12345"
    )
    forged = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert forged.headers["X-Request-ID"] != "bad id <script>"


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_readiness_fails_when_the_database_is_gone(app, client, monkeypatch):
    import sqlalchemy as sa

    from mobile_api.extensions import db

    def unreachable(*args, **kwargs):
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    with app.app_context():
        monkeypatch.setattr(type(db.session()), "execute", unreachable)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["code"] == 503
    assert body["error"] == "database_unavailable"


def test_metrics_count_requests_by_endpoint_and_status(client):
    client.get("/healthz")
    client.get("/nowhere")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'mobile_api_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in text
    assert 'endpoint="unmatched",method="GET",status="404"' in text
    assert "mobile_api_http_request_duration_seconds_bucket" in text


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/devices", "/v1/devices/me", "/v1/devices/me/preferences"):
        assert path in spec["paths"]
    error = spec["components"]["schemas"]["Error"]
    assert {"code", "status", "message", "errors", "error"} <= set(error["properties"])
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert b"swagger" in docs.data.lower()


def test_secret_key_is_required_outside_testing(monkeypatch):
    from mobile_api import create_app

    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "SECRET_KEY_FILE": "/nonexistent"})


def test_secret_key_is_read_from_an_owner_only_file(monkeypatch, tmp_path):
    from mobile_api import create_app

    monkeypatch.delenv("SECRET_KEY", raising=False)
    secret_file = tmp_path / "secret_key"
    secret_file.write_text("generated-by-bin-serve\n")
    secret_file.chmod(0o600)
    monkeypatch.setenv("SECRET_KEY_FILE", str(secret_file))
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert app.config["SECRET_KEY"] == "generated-by-bin-serve"

    secret_file.chmod(0o640)
    with pytest.raises(RuntimeError, match="chmod 600"):
        create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})


def test_proxy_fix_is_configurable(app_factory):
    app = app_factory(PROXY_FIX_X_FOR=1, PROXY_FIX_X_PROTO=1)
    seen = {}

    @app.get("/_probe")
    def probe():
        from flask import request

        seen["addr"] = request.remote_addr
        seen["scheme"] = request.scheme
        return {}

    app.test_client().get(
        "/_probe", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    )
    assert seen == {"addr": "203.0.113.9", "scheme": "https"}


def test_unknown_query_parameters_are_refused(client, register):
    _, token = register()
    response = client.get(
        "/v1/devices/me/consents", headers=bearer(token), query_string={"limt": 5}
    )
    assert response.status_code == 422
    assert response.get_json()["errors"]["query"] == {"limt": ["Unknown field."]}

    # An operation that takes no query arguments refuses a query string too, and
    # changes nothing: nothing is accepted in a URL.
    refused = client.put(
        "/v1/devices/me/preferences?lat=48.1",
        json={"promotional_push": True},
        headers=bearer(token),
    )
    assert refused.status_code == 422
    assert refused.get_json()["errors"]["query"] == {"lat": ["Unknown field."]}
    preferences = client.get("/v1/devices/me/preferences", headers=bearer(token)).get_json()
    assert preferences["promotional_push"] is False
