"""Logs never contain secrets or push tokens."""

from __future__ import annotations

import json
import logging

from mobile_api.observability import JsonFormatter
from tests.conftest import bearer, device_body


def test_registration_check_in_and_preferences_leave_no_secret_in_logs(client, app_key, caplog):
    caplog.set_level(logging.DEBUG)
    push_token = "fcm-secret-push-token-0123456789"
    response = client.post(
        "/v1/devices",
        json=device_body(push_token=push_token, push_permission="granted"),
        headers=bearer(app_key),
    )
    device_token = response.get_json()["device_token"]
    rotated_push = "fcm-rotated-push-token-9876543210"
    client.patch(
        "/v1/devices/me",
        json={"push_token": rotated_push, "push_permission": "denied"},
        headers=bearer(device_token),
    )
    client.put(
        "/v1/devices/me/preferences",
        json={"promotional_push": True, "analytics": True},
        headers=bearer(device_token),
    )
    client.get("/v1/devices/me/export", headers=bearer(device_token))
    assert len(caplog.records) >= 4  # the access log did run
    formatter = JsonFormatter()
    for record in caplog.records:
        for text in (record.getMessage(), formatter.format(record), repr(record.args)):
            for secret in (app_key, device_token, push_token, rotated_push):
                assert secret not in text, record.name


def test_formatter_masks_secret_shapes_whatever_logged_them():
    record = logging.LogRecord(
        "somelib", logging.INFO, __file__, 1, "header was %s", ("Bearer abc.def",), None
    )
    line = json.loads(JsonFormatter().format(record))
    assert "abc.def" not in line["message"]
    record = logging.LogRecord(
        "somelib", logging.INFO, __file__, 1, "token mk_%s", ("A" * 43,), None
    )
    assert "A" * 43 not in JsonFormatter().format(record)


def test_a_traceback_rendered_upstream_still_reaches_the_json_line():
    # The geo log filter renders (and redacts) tracebacks itself and drops exc_info.
    record = logging.LogRecord("geopy", logging.ERROR, __file__, 1, "lookup failed", (), None)
    record.exc_text = "Traceback ...\nGeocoderServiceError: [redacted]"
    line = json.loads(JsonFormatter().format(record))
    assert line["exception"] == record.exc_text
