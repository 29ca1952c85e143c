"""Fixtures and helpers of the support, privacy and audit tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.extensions import db
from models import AccountTermination, Device, utcnow
from tests.conftest import bearer


@pytest.fixture
def staff(make_key: Callable[[str], str]) -> Callable[[str], dict[str, str]]:
    """Authorization headers of a fresh key of a role (one key per role per test)."""
    made: dict[str, dict[str, str]] = {}

    def headers(role: str) -> dict[str, str]:
        if role not in made:
            made[role] = bearer(make_key(role))
        return made[role]

    return headers


def unique(prefix: str) -> str:
    """An identifier no other row can contain by accident."""
    return f"{prefix}-{uuid.uuid4().hex}"


def rows_mentioning(app: Flask, *needles: str) -> list[tuple[str, str]]:
    """(table, needle) for every row of every table in the database that contains a needle.

    The tables are read from the database itself, not the models: a table that a migration
    made and no model declares is scanned too.
    """
    found = []
    with app.app_context():
        schema = sa.MetaData()
        schema.reflect(bind=db.engine)
        for table in schema.sorted_tables:
            for row in db.session.execute(sa.select(table)):
                text = json.dumps([str(value) for value in row])
                found.extend((table.name, needle) for needle in needles if needle in text)
        db.session.remove()
    return found


def consents(client: FlaskClient, device_token: str) -> list[dict[str, Any]]:
    """The device's own consent history."""
    response = client.get("/v1/devices/me/consents", headers=bearer(device_token))
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.get_json()["items"]
    return items


def audit_events(client: FlaskClient, headers: dict[str, str], **filters: str) -> list[Any]:
    """Audit events matching the filters, newest first (first page)."""
    response = client.get(
        "/v1/admin/audit", query_string={**filters, "limit": 500}, headers=headers
    )
    assert response.status_code == 200, response.get_json()
    items: list[Any] = response.get_json()["items"]
    return items


def seed_terminated_accounts(
    session: Any, accounts: int, devices_each: int, terminated_at: datetime
) -> list[str]:
    """Terminated accounts with devices, written directly; returns the account ids."""
    ids = [unique("acct") for _ in range(accounts)]
    for account_id in ids:
        session.add(AccountTermination(account_id=account_id, terminated_at=terminated_at))
        for _ in range(devices_each):
            session.add(
                Device(
                    installation_id=unique("inst"),
                    token_hash=uuid.uuid4().hex + uuid.uuid4().hex,
                    platform="android",
                    os_version="14",
                    account_id=account_id,
                )
            )
    session.commit()
    return ids


def backdate_termination(app: Flask, account_id: str, days: float) -> None:
    """Move an account's termination `days` before the real clock, as if they had passed."""
    with app.app_context():
        db.session.execute(
            sa.update(AccountTermination)
            .where(AccountTermination.account_id == account_id)
            .values(terminated_at=utcnow() - timedelta(days=days))
        )
        db.session.commit()
        db.session.remove()
