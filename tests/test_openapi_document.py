"""The published document types what the service returns and declares what it enforces."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

import pytest

from mobile_api.pagination import encode_cursor
from tests.conftest import bearer


@pytest.fixture
def document(client) -> dict[str, Any]:
    return client.get("/openapi.json").get_json()


def _schemas(document: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = document["components"]["schemas"]
    return schemas


def test_no_property_is_left_untyped(document):
    untyped = [
        f"{name}.{prop}"
        for name, schema in _schemas(document).items()
        for prop, definition in schema.get("properties", {}).items()
        if not {"type", "$ref", "allOf", "anyOf", "oneOf"} & set(definition)
        and definition.get("additionalProperties") is None
    ]
    assert untyped == []
    device = _schemas(document)["Device"]["properties"]
    assert device["push_token_valid"]["type"] == "boolean"
    assert device["preferences"]["allOf"] == [{"$ref": "#/components/schemas/Consents"}]
    assert _schemas(document)["AdminDevice"]["properties"]["disabled"]["type"] == "boolean"


def test_nullable_enums_refer_to_one_named_enum(document):
    schemas = _schemas(document)
    for name in ("DeviceRegister", "DeviceCheckIn", "Device", "ExportedDevice"):
        push = schemas[name]["properties"]["push_permission"]
        assert push == {
            "nullable": True,
            "allOf": [{"$ref": "#/components/schemas/PushPermission"}],
        }
    assert None not in schemas["PushPermission"]["enum"]


def test_exports_document_their_bodies(document):
    paths = document["paths"]
    for path, schema in [
        ("/v1/devices/me/export", "DeviceExport"),
        ("/v1/admin/devices/{device_id}/export", "DeviceExport"),
        ("/v1/admin/accounts/{account_id}/export", "AccountExport"),
    ]:
        ok = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{schema}"}


def test_every_iana_time_zone_fits_the_declared_pattern(document):
    declared = _schemas(document)["DeviceRegister"]["properties"]["timezone"]
    assert declared["format"] == "iana-time-zone"
    pattern = re.compile(declared["pattern"])
    for name in zoneinfo.available_timezones():
        assert pattern.match(name) and len(name) <= declared["maxLength"], name


def test_locale_and_telemetry_and_places_rules_are_declared(document):
    schemas = _schemas(document)
    locale = schemas["DeviceCheckIn"]["properties"]["locale"]
    assert re.match(locale["pattern"], "zh-Hant-TW") and not re.match(locale["pattern"], "xx_YY")
    properties = schemas["TelemetryEvent"]["properties"]["properties"]
    assert properties["maxProperties"] == 20 and properties["x-max-json-bytes"] == 4096
    assert {"type": "string"} in properties["additionalProperties"]["anyOf"]
    assert schemas["TelemetryBatch"]["properties"]["events"]["maxItems"] == 100
    assert schemas["PlaceSearch"]["x-exactly-one-of"] == ["category", "query"]


def test_every_list_declares_the_cursor_it_enforces(document, client, register):
    _, token = register()
    cursors = [
        parameter["schema"]
        for operations in document["paths"].values()
        for operation in operations.values()
        if isinstance(operation, dict)
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "cursor"
    ]
    assert len(cursors) >= 4
    pattern = re.compile(cursors[0]["pattern"])
    assert all(cursor["pattern"] == pattern.pattern for cursor in cursors)
    assert pattern.match(encode_cursor(10**6)) and pattern.match(encode_cursor("01ABC"))
    # Outside the pattern is refused even where base64 would have skipped the characters.
    bad = encode_cursor(1)[:2] + "!" + encode_cursor(1)[2:]
    response = client.get(
        "/v1/devices/me/consents", query_string={"cursor": bad}, headers=bearer(token)
    )
    assert response.status_code == 422 and response.get_json()["error"] == "invalid_cursor"
