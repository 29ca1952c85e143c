"""Property-based run of every operation in the published OpenAPI document (schemathesis).

The document is read once at collection time, so every operation that any blueprint
adds is covered without touching this file. Each example goes through the WSGI test
client of a fresh app on the test database, with the credential its `x-roles` asks
for: a device token for device endpoints, an admin key for everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    is_unexpected_http_status_case,
    negative_data_rejection,
    response_schema_conformance,
    unsupported_method,
)

from mobile_api import config
from mobile_api.auth import DEVICE
from mobile_api.extensions import db
from mobile_api.services import devices as device_service
from mobile_api.services import keys as key_service
from tests.conftest import bearer, device_body, make_app

# A fixed seed keeps CI reproducible; 25 generated examples per operation (plus
# schemathesis' deterministic coverage cases) keeps the run well under a minute.
FUZZ_CONFIG = schemathesis.Config.from_dict({"seed": 20261124, "generation": {"max-examples": 25}})

# The document does not depend on the data, so an in-memory app serves it.
schema = schemathesis.openapi.from_wsgi("/openapi.json", make_app("sqlite://"), config=FUZZ_CONFIG)


def documented_status(ctx: Any, response: Any, case: Any) -> None:
    """Every status an operation returns is listed on it, not only covered by `default`.

    flask-smorest adds a `default` response to each operation, which makes
    schemathesis' own status_code_conformance accept anything.
    """
    if is_unexpected_http_status_case(case):
        return  # a probe with a method or shape the operation does not have
    documented = {code for code in case.operation.responses.status_codes if code != "default"}
    status = str(response.status_code)
    assert status in documented, (
        f"{case.operation.label} answered {status}, documented: {sorted(documented)}"
    )


# positive_data_acceptance is left out on purpose: business rules legitimately
# refuse schema-valid input (an opaque cursor that is not ours, an id that does
# not exist, an audience that matches nothing); the documented-status check above
# still requires those refusals to be listed.
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    documented_status,
    content_type_conformance,
    negative_data_rejection,
    unsupported_method,
    ignored_auth,
]


def operation_roles(operation: Any) -> list[str]:
    """The roles an operation admits, from its `x-roles` extension (none: public)."""
    roles: list[str] = operation.definition.raw.get("x-roles", [])
    return roles


@pytest.fixture
def fuzz_app(app_factory: Callable[..., Flask]) -> Flask:
    """The app under fuzz: rate limits off, so every example reaches the endpoint."""
    return app_factory(RATELIMIT_ENABLED=False)


@pytest.fixture
def credential_for(fuzz_app: Flask) -> Callable[[Any], str]:
    """The secret to present for an operation: an admin key, or a fresh device's token."""
    with fuzz_app.app_context():
        _, admin_secret = key_service.create(db.session, "admin", "fuzz admin")

    def credential(operation: Any) -> str:
        if DEVICE not in operation_roles(operation):
            return admin_secret
        # A fresh device per example: DELETE /v1/devices/me (or any future
        # endpoint that retires the token) cannot spoil the examples after it.
        with fuzz_app.app_context():
            return device_service.register(db.session, device_body(), None).device_token

    return credential


@schema.parametrize()
@settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(
    case: Any, fuzz_app: Flask, credential_for: Callable[[Any], str]
) -> None:
    case.call_and_validate(
        headers=bearer(credential_for(case.operation)), app=fuzz_app, checks=CHECKS
    )


def test_every_operation_declares_its_roles():
    # The fuzz picks each operation's credential from x-roles: an operation with
    # security but no x-roles would be fuzzed with the wrong one.
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("security"):
            assert operation_roles(operation), operation.label


def test_device_operations_are_fuzzed_with_a_device_token():
    labels = {
        result.ok().label
        for result in schema.get_all_operations()
        if DEVICE in operation_roles(result.ok())
    }
    assert {"GET /v1/devices/me", "DELETE /v1/devices/me"} <= labels


def _tiny_rate_limits() -> dict[str, str]:
    """Every rate-limit setting ("60 per minute", ...) lowered to one request an hour."""
    return {
        name: "1 per hour"
        for name, value in vars(config.Defaults).items()
        if name.startswith("RATELIMIT_") and isinstance(value, str) and " per " in value
    }


def test_rate_limited_operations_document_429(app_factory):
    app = app_factory(RATELIMIT_ENABLED=True, **_tiny_rate_limits())
    with app.app_context():
        _, admin_secret = key_service.create(db.session, "admin", "limits admin")
        device_token = device_service.register(db.session, device_body(), None).device_token
    limited = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        secret = device_token if DEVICE in operation_roles(operation) else admin_secret
        for _ in range(2):
            body: dict[str, Any] = {}
            if operation.label == "POST /v1/devices":
                body = device_body()
            case = operation.Case(
                path_parameters={parameter.name: "0" for parameter in operation.path_parameters},
                **({"body": body, "media_type": "application/json"} if operation.body else {}),
            )
            response = case.call(app=app, headers=bearer(secret))
            case.validate_response(
                response, checks=[documented_status, response_schema_conformance]
            )
            if response.status_code == 429:
                limited.add(operation.label)
    # The limits did engage, so the sweep above can fail.
    assert {"POST /v1/devices", "GET /v1/devices/me", "PATCH /v1/devices/me"} <= limited


def test_malformed_and_oversized_bodies_are_documented(client, app_key):
    document = client.get("/openapi.json").get_json()
    register = document["paths"]["/v1/devices"]["post"]["responses"]
    assert {"400", "413"} <= set(register)
    assert "400" not in document["paths"]["/v1/devices/me"]["get"]["responses"]
    response = client.post(
        "/v1/devices",
        data=b"{" + b" " * (1024 * 1024),
        headers={**bearer(app_key), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.get_json()["code"] == 413


@pytest.mark.parametrize(
    ("method", "path"), [("patch", "/v1/devices/me"), ("put", "/v1/devices/me/preferences")]
)
def test_bodiless_device_updates_are_documented_as_optional(client, register, method, path):
    # An empty check-in is a heartbeat: it only marks the device seen.
    document = client.get("/openapi.json").get_json()
    assert document["paths"][path][method]["requestBody"]["required"] is False
    _, token = register()
    response = getattr(client, method)(path, headers=bearer(token))
    assert response.status_code == 200
