"""Fixtures for notification tests: notify keys, a transactional category, posting helpers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import bearer

TRANSACTIONAL = "ticket_reply"


@pytest.fixture
def notify(make_key: Callable[[str], str]) -> dict[str, str]:
    """Authorization header of a notify key (the helpdesk backend)."""
    return bearer(make_key("notify"))


def notification_body(**overrides: Any) -> dict[str, Any]:
    """A valid notification body to an account (give device_ids=[...] to target devices)."""
    body: dict[str, Any] = {
        "category_key": TRANSACTIONAL,
        "account_id": "acct-1",
        "title": "An agent answered",
        "body": "Ticket #42 has a new reply.",
        "data": {"ticket": "42"},
    }
    if "device_ids" in overrides:
        body.pop("account_id")
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def idempotency_key() -> str:
    """A fresh Idempotency-Key."""
    return f"idem-{uuid.uuid4().hex}"


@pytest.fixture
def post_notification(client: FlaskClient) -> Callable[..., TestResponse]:
    """POST /v1/notifications with a body and headers (and an Idempotency-Key if given)."""

    def post(headers: dict[str, str], body: dict[str, Any], key: str | None = None) -> TestResponse:
        all_headers = dict(headers)
        if key is not None:
            all_headers["Idempotency-Key"] = key
        return client.post("/v1/notifications", json=body, headers=all_headers)

    return post
