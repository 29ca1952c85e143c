"""API keys from the command line, bearer authentication and role checks."""

from __future__ import annotations

import sqlalchemy as sa

from mobile_api.extensions import db
from models import ApiKey
from tests.conftest import bearer, device_body


def create_key(runner, role: str, name: str = "ci") -> str:
    result = runner.invoke(args=["keys", "create", "--role", role, "--name", name])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def test_keys_create_prints_secret_last_and_stores_only_its_hash(app, runner):
    secret = create_key(runner, "marketing", "campaign tool")
    assert secret.startswith("mk_")
    assert len(secret) >= 3 + 43  # 256 random bits, base64url
    with app.app_context():
        stored = db.session.scalars(sa.select(ApiKey)).one()
        assert stored.role == "marketing"
        assert stored.secret_hash != secret
        assert secret not in repr(stored.__dict__)


def test_keys_list_never_shows_secrets(runner):
    secret = create_key(runner, "support", "helpdesk")
    listing = runner.invoke(args=["keys", "list"])
    assert listing.exit_code == 0
    assert "helpdesk" in listing.output
    assert "support" in listing.output
    assert "active" in listing.output
    assert secret not in listing.output


def test_revoked_key_stops_working_at_once(runner, client):
    secret = create_key(runner, "app")
    assert client.post("/v1/devices", json=device_body(), headers=bearer(secret)).status_code == 201
    key_id = runner.invoke(args=["keys", "list"]).output.split("\t")[0]
    result = runner.invoke(args=["keys", "revoke", key_id])
    assert result.exit_code == 0
    assert "revoked" in runner.invoke(args=["keys", "list"]).output
    refused = client.post("/v1/devices", json=device_body(), headers=bearer(secret))
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "unauthenticated"


def test_revoke_unknown_key_fails(runner):
    result = runner.invoke(args=["keys", "revoke", "NOPE"])
    assert result.exit_code != 0
    assert "no key" in result.output


def test_create_rejects_unknown_role_and_empty_name(runner):
    assert runner.invoke(args=["keys", "create", "--role", "root", "--name", "x"]).exit_code != 0
    assert runner.invoke(args=["keys", "create", "--role", "app", "--name", "  "]).exit_code != 0


def test_missing_malformed_and_unknown_credentials_are_401(client):
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer mk_not-a-real-key-at-all-0000000000000"},
        {"Authorization": "Bearer dt_not-a-real-token-000000000000000000"},
        {"Authorization": "Bearer something-else"},
    ):
        response = client.post("/v1/devices", json=device_body(), headers=headers)
        assert response.status_code == 401, headers
        assert response.get_json() == {
            "code": 401,
            "status": "Unauthorized",
            "message": "A valid bearer credential is required.",
            "error": "unauthenticated",
        }


def test_wrong_role_is_403(client, make_key):
    for role in ("marketing", "support", "privacy"):
        response = client.post("/v1/devices", json=device_body(), headers=bearer(make_key(role)))
        assert response.status_code == 403
        assert response.get_json()["error"] == "forbidden"


def test_admin_may_register(client, make_key):
    response = client.post("/v1/devices", json=device_body(), headers=bearer(make_key("admin")))
    assert response.status_code == 201


def test_api_keys_cannot_act_as_a_device(client, make_key):
    for role in ("app", "admin"):
        response = client.get("/v1/devices/me", headers=bearer(make_key(role)))
        assert response.status_code == 403
        assert response.get_json()["error"] == "forbidden"


def test_device_token_cannot_register(client, register):
    _, token = register()
    response = client.post("/v1/devices", json=device_body(), headers=bearer(token))
    assert response.status_code == 403


def test_auth_is_checked_before_the_body(client):
    # An unauthenticated caller learns nothing about validation rules.
    response = client.post("/v1/devices", json={"bogus": True})
    assert response.status_code == 401


def test_roles_are_declared_in_openapi(client):
    spec = client.get("/openapi.json").get_json()
    register = spec["paths"]["/v1/devices"]["post"]
    assert register["security"] == [{"bearerAuth": []}]
    assert register["x-roles"] == ["app"]
    assert {"401", "403", "409", "422"} <= set(register["responses"])
    assert spec["paths"]["/v1/devices/me"]["get"]["x-roles"] == ["device"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
