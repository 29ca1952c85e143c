"""Positions leave no trace: not in the database, not in any log record, only counts in /metrics."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from mobile_api.extensions import db
from mobile_api.services import places as places_service
from tests.conftest import bearer
from tests.fakes.nominatim_server import FakeNominatim
from tests.places_fixtures import (
    LAT,
    LON,
    ROUNDED_LAT,
    ROUNDED_LON,
    app,
    device_token,
    located,
    nominatim,
    places_settings,
    reverse,
    search,
)

__all__ = ["app", "device_token", "located", "nominatim", "places_settings"]

# Every spelling of the position that could leak: exact, truncated and rounded.
NEEDLES = ("48.137154", "11.576124", "48.137", "11.576", ROUNDED_LAT, ROUNDED_LON)


def _full_cycle(client: FlaskClient, token: str, nominatim: FakeNominatim) -> None:
    """Every path a position takes: hit, miss, reverse, refusals and a provider fault."""
    headers = {"User-Agent": "HelpdeskApp/5.2", "X-Forwarded-For": "203.0.113.5"}
    assert search(client, token, headers=headers).status_code == 200
    assert search(client, token, headers=headers).status_code == 200  # cache hit
    assert reverse(client, token).status_code == 200
    assert search(client, token, lat=123.456).status_code == 422
    nominatim.fail(500)
    assert search(client, token, category=None, query="night pharmacy").status_code == 502


@pytest.fixture
def every_log_record() -> Iterator[list[logging.LogRecord]]:
    """Turn every logger up to DEBUG and collect every record any of them emits."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.DEBUG)
    loggers = [logging.getLogger()] + [
        logging.getLogger(name)
        for name, item in list(logging.root.manager.loggerDict.items())
        if isinstance(item, logging.Logger)
    ]
    saved = [(lg, lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
        if lg is logging.getLogger() or not lg.propagate:
            lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg, level, disabled in saved:
            lg.setLevel(level)
            lg.disabled = disabled
            lg.removeHandler(handler)


_TIMING = {"created", "msecs", "relativeCreated", "duration_ms", "thread", "process", "taskName"}


def _record_text(record: logging.LogRecord) -> str:
    """All of a record that a handler could write: message, arguments, extras, traceback."""
    parts = [record.getMessage(), repr(record.args)]
    parts += [repr(v) for k, v in vars(record).items() if k not in _TIMING | {"exc_info"}]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def test_no_position_in_any_log_record_at_debug(
    client: FlaskClient,
    device_token: str,
    nominatim: FakeNominatim,
    every_log_record: list[logging.LogRecord],
) -> None:
    _full_cycle(client, device_token, nominatim)

    names = {r.name for r in every_log_record}
    # DEBUG really was on: the HTTP client logged its requests, and the access log ran.
    assert "urllib3.connectionpool" in names
    assert "mobile_api.access" in names
    sent_boxes = {v for r in nominatim.recorded for v in (r.param("viewbox") or "").split(",") if v}
    for record in every_log_record:
        text = _record_text(record)
        for needle in (*NEEDLES, "123.456", *sent_boxes):
            assert needle not in text, (record.name, needle)


def test_positions_are_never_stored(
    app: Flask, client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    _full_cycle(client, device_token, nominatim)

    sent_boxes = {v for r in nominatim.recorded for v in (r.param("viewbox") or "").split(",") if v}
    near = [float(n) for n in NEEDLES]
    with app.app_context():
        rows = 0
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(sa.select(table)):
                rows += 1
                for value in row:
                    _assert_not_a_position(value, near, {*NEEDLES, *sent_boxes})
    assert rows > 0  # the scan saw the device and its consent records


def _assert_not_a_position(value: Any, near: list[float], needles: set[str]) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, datetime):
        return
    if isinstance(value, int | float):
        assert all(abs(value - n) > 0.05 for n in near), value
        return
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    for needle in needles:
        assert not re.search(rf"(?<![\d]){re.escape(needle)}", text), needle


def _lookups(client: FlaskClient) -> dict[tuple[str, str, str], float]:
    families = text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    counts: dict[tuple[str, str, str], float] = {}
    for family in families:
        if family.name != "mobile_api_places_lookups":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                counts[(labels["endpoint"], labels["cache"], labels["outcome"])] = sample.value
    return counts


def test_every_forward_is_counted_without_positions(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    before = _lookups(client)

    _full_cycle(client, device_token, nominatim)

    after = _lookups(client)
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert delta == {
        ("search", "miss", "ok"): 1,
        ("search", "hit", "ok"): 1,
        ("reverse", "miss", "ok"): 1,
        ("search", "miss", "error"): 1,
    }
    for endpoint, cache, outcome in after:
        assert endpoint in {"search", "reverse"}
        assert cache in {"hit", "miss"}
        assert outcome in {"ok", "unavailable", "timeout", "error"}


def test_consent_refusals_are_counted_and_send_nothing(
    client: FlaskClient, located: Any, nominatim: FakeNominatim
) -> None:
    _, token = located(location_services=False)
    refusals = places_service.CONSENT_REFUSALS.labels("search")
    before = refusals._value.get()

    assert search(client, token).status_code == 403

    assert refusals._value.get() == before + 1
    assert nominatim.recorded == []
    assert client.get("/v1/devices/me", headers=bearer(token)).status_code == 200


def test_the_point_is_not_echoed_in_responses(
    client: FlaskClient, device_token: str, nominatim: FakeNominatim
) -> None:
    body = search(client, device_token).get_data(as_text=True)
    body += reverse(client, device_token).get_data(as_text=True)
    assert str(LAT) not in body
    assert str(LON) not in body
