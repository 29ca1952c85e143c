"""The data inventory (models/inventory.py): complete, served, in the README, and what export and
erasure follow.

A new column without an entry fails `test_every_column_of_every_model_is_declared`. A new table
with personal data of a device fails `test_the_fixture_device_has_rows_in_every_table_it_can`
until `device_with_everything` below stores a row of it: then the export and erasure tests
cover it too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from mobile_api.extensions import db
from mobile_api.services import erasure, export, inventory, privacy
from mobile_api.services.caller import CLI
from mobile_api.services.secrets import hash_secret
from models import Base, Campaign, Delivery, Device, Notification, NotificationDelivery, Role
from models.inventory import INVENTORY, Erasure, Personal, Subject, personal, stale, undeclared
from tests.conftest import bearer
from tests.privacy_fixtures import (
    backdate_termination,
    rows_mentioning,
    staff,  # noqa: F401 (fixture)
    unique,
)
from tests.telemetry_fixtures import event

README = Path(__file__).resolve().parent.parent / "README.md"
Register = Callable[..., tuple[dict[str, Any], str]]
Staff = Callable[[str], dict[str, str]]


# --- the declaration itself ---------------------------------------------------------------


def test_every_column_of_every_model_is_declared() -> None:
    missing = undeclared(Base.metadata)
    assert missing == [], (
        "declare these columns in models/inventory.py, personal (device(...), staff(...)) "
        f"or not (not_personal(why)): {missing}"
    )


def test_no_entry_names_a_column_that_does_not_exist() -> None:
    assert stale(Base.metadata) == []


def test_a_column_added_without_an_entry_is_caught() -> None:
    metadata = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    sa.Table("devices", metadata, sa.Column("favourite_colour", sa.String), extend_existing=True)
    assert undeclared(metadata) == ["devices.favourite_colour"]


def test_every_keyed_hash_column_has_a_scrubber(app: Flask) -> None:
    for table, columns in INVENTORY.items():
        for column, entry in columns.items():
            if isinstance(entry, Personal) and entry.erasure is Erasure.KEYED_HASH:
                assert (table, column) in erasure._SCRUBBERS, f"{table}.{column}"


def test_the_readme_shows_the_inventory_as_declared() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.find(inventory.README_START), text.find(inventory.README_END)
    assert start != -1 and end != -1, "the README lacks the inventory markers"
    assert text[start : end + len(inventory.README_END)] == inventory.markdown(), (
        "README's inventory is stale: paste `flask --app wsgi privacy inventory` between markers"
    )


# --- GET /v1/privacy/inventory ---------------------------------------------------------------


@pytest.mark.parametrize("role", [role.value for role in Role])
def test_any_api_key_role_may_read_the_inventory(
    app: Flask, client: FlaskClient, make_key: Callable[[str], str], role: str
) -> None:
    response = client.get("/v1/privacy/inventory", headers=bearer(make_key(role)))

    assert response.status_code == 200
    body = response.get_json()
    served = {(f["table"], f["column"]) for f in body["personal"]}
    served_not = {(f["table"], f["column"]) for f in body["not_personal"]}
    with app.app_context():
        schema = {(t.name, c.name) for t in db.metadata.sorted_tables for c in t.columns}
    assert served | served_not == schema and not served & served_not
    installation = next(f for f in body["personal"] if f["column"] == "installation_id")
    assert installation == {
        "table": "devices",
        "column": "installation_id",
        "subject": "device",
        "purpose": "notifications",
        "legal_basis": "contract",
        "retention": "until the device is erased",
        "exported": True,
        "export_path": "device.installation_id",
        "why_not_exported": None,
        "erasure": "row deleted when the device is erased",
    }


def test_devices_and_strangers_may_not_read_the_inventory(
    client: FlaskClient, register: Register
) -> None:
    _, token = register()
    assert client.get("/v1/privacy/inventory", headers=bearer(token)).status_code in (401, 403)
    assert client.get("/v1/privacy/inventory").status_code == 401


# --- a device with data in every table ------------------------------------------------------


@dataclass
class Everything:
    """A device with a row in every table that can hold its personal data."""

    device: dict[str, Any]
    token: str
    account_id: str
    push_token: str

    @property
    def needles(self) -> list[str]:
        """Every identifier, token and hash of them that erasure must leave nowhere."""
        device_id = self.device["id"]
        return [
            device_id,
            self.device["installation_id"],
            self.token,
            hash_secret(self.token),
            self.push_token,
            hash_secret(self.push_token),
            self.account_id,
        ]


@pytest.fixture
def device_with_everything(
    app: Flask,
    client: FlaskClient,
    register: Register,
    staff: Staff,  # noqa: F811
) -> Everything:
    """Register a device with every field, then give it a row in every table it can have."""
    account = unique("acct")
    push_token = unique("fcm")
    device, token = register(
        account_id=account,
        push_token=push_token,
        push_permission="granted",
        location_permission="approximate",
        device_model="Pixel 8",
        app_version="5.1.0",
        locale="id-ID",
        timezone="Asia/Jakarta",
    )
    headers = bearer(token)
    category = {
        "name": "Ticket updates",
        "kind": "transactional",
        "default_enabled": True,
        "android_channel_id": "tickets",
        "ios_interruption_level": "active",
    }
    put = client.put("/v1/admin/categories/tickets", json=category, headers=staff("admin"))
    assert put.status_code in (200, 201), put.get_json()
    preferences = {
        "analytics": True,
        "promotional_push": True,
        "policy_version": "2026-01",
        "categories": {"tickets": False},
        "quiet_hours": {"start": "22:00", "end": "07:00"},
    }
    assert (
        client.put("/v1/devices/me/preferences", json=preferences, headers=headers).status_code
        == 200
    )
    assert (
        client.patch("/v1/devices/me", json={"app_version": "5.2.0"}, headers=headers).status_code
        == 200
    )
    json = {"events": [event()]}
    assert client.post("/v1/telemetry/events", json=json, headers=headers).status_code == 202
    disable = {"reason": f"user {account} asked", "ticket": "T-1"}
    assert (
        client.post(
            f"/v1/admin/devices/{device['id']}/disable", json=disable, headers=staff("support")
        ).status_code
        == 200
    )
    campaign = {
        "name": "spring",
        "category": "promotional",
        "title": "t",
        "body": "b",
        "audience": {"device_ids": [device["id"]], "account_ids": [account]},
    }
    created = client.post("/v1/campaigns", json=campaign, headers=staff("marketing"))
    assert created.status_code == 201, created.get_json()
    with app.app_context():
        campaign_id = created.get_json()["id"]
        db.session.add(Delivery(campaign_id=campaign_id, device_id=device["id"], status="sent"))
        # A notification to the account, and one naming the device.
        for target in ({"account_id": account}, {"device_ids": [device["id"]]}):
            notification = Notification(
                category_key="service",
                title="t",
                body="b",
                created_by="key:x",
                created_role="admin",
                **target,
            )
            db.session.add(notification)
            db.session.flush()
            db.session.add(
                NotificationDelivery(
                    notification_id=notification.id, device_id=device["id"], status="sent"
                )
            )
        db.session.commit()
        db.session.remove()
    return Everything(device=device, token=token, account_id=account, push_token=push_token)


def _device_rows(app: Flask, device_id: str) -> dict[str, int]:
    """Rows per table tied to the device by a column referencing devices.id."""
    counts: dict[str, int] = {}
    with app.app_context():
        for table in db.metadata.sorted_tables:
            for column in table.columns:
                if any(fk.column.table.name == "devices" for fk in column.foreign_keys):
                    n = db.session.scalar(
                        sa.select(sa.func.count()).select_from(table).where(column == device_id)
                    )
                    counts[table.name] = counts.get(table.name, 0) + int(n or 0)
        db.session.remove()
    return counts


def test_the_fixture_device_has_rows_in_every_table_it_can(
    app: Flask, device_with_everything: Everything
) -> None:
    counts = _device_rows(app, device_with_everything.device["id"])
    for table, n in counts.items():
        if any(e.subject is Subject.DEVICE for e in personal(table).values()):
            assert n > 0, f"give device_with_everything a row of {table}"


# --- export follows the inventory -------------------------------------------------------------


def _resolve(document: Any, path: str) -> list[Any]:
    """The values at a path like `device.id`, `consents[].purpose` (each item of a list) or
    `settings.categories{keys}` (each key of a map; `{values}`, each value)."""
    values = [document]
    for part in path.split("."):
        key, _, spread = part.partition("{")
        each = key.endswith("[]")
        key = key.removesuffix("[]")
        found = []
        for value in values:
            assert isinstance(value, dict) and key in value, f"{path}: no {key!r}"
            item = value[key]
            if spread == "keys}":
                found.extend(item.keys())
            elif spread == "values}":
                found.extend(item.values())
            else:
                found.extend(item if each else [item])
        values = found
    return values


def _db_values(app: Flask, table: str, column: str, device_id: str, account_id: str) -> list[Any]:
    with app.app_context():
        t = db.metadata.tables[table]
        if "device_id" in t.c:
            where = t.c.device_id == device_id
        elif table == "devices":
            where = t.c.id == device_id
        else:
            where = t.c.account_id == account_id
        values = [
            export.to_json(v) for v in db.session.scalars(sa.select(t.c[column]).where(where))
        ]
        db.session.remove()
    return values


@pytest.mark.parametrize("who", ["self", "staff"])
def test_every_exported_column_of_the_device_is_in_its_export(
    app: Flask,
    client: FlaskClient,
    device_with_everything: Everything,
    staff: Staff,  # noqa: F811
    who: str,
) -> None:
    everything = device_with_everything
    device_id = everything.device["id"]
    if who == "self":
        response = client.get("/v1/devices/me/export", headers=bearer(everything.token))
    else:
        response = client.get(f"/v1/admin/devices/{device_id}/export", headers=staff("privacy"))
    assert response.status_code == 200
    document = response.get_json()
    checked = 0
    for table in INVENTORY:
        for column, entry in personal(table).items():
            if entry.subject is not Subject.DEVICE or entry.export is None:
                continue
            if table == "account_terminations":
                continue  # in the account's export, below
            exported = _resolve(document, entry.export)
            stored = _db_values(app, table, column, device_id, everything.account_id)
            assert stored, f"{table}.{column}: the fixture stored nothing to compare"
            if column == "device_id":
                assert exported == [device_id]
            else:
                assert sorted(map(repr, exported)) == sorted(map(repr, stored)), f"{table}.{column}"
            checked += 1
    assert checked >= 30


def test_the_account_export_holds_its_termination(
    app: Flask,
    client: FlaskClient,
    device_with_everything: Everything,
    staff: Staff,  # noqa: F811
) -> None:
    account = device_with_everything.account_id
    assert client.post(
        f"/v1/admin/accounts/{account}/terminate", headers=staff("privacy")
    ).status_code in (200, 202)

    document = client.get(
        f"/v1/admin/accounts/{account}/export", headers=staff("privacy")
    ).get_json()

    for column, entry in personal("account_terminations").items():
        assert entry.export is not None
        assert _resolve(document, entry.export) == _db_values(
            app, "account_terminations", column, "", account
        )
    assert [d["device"]["id"] for d in document["devices"]] == [device_with_everything.device["id"]]


# --- erasure follows the inventory ------------------------------------------------------------


def _erase(
    how: str,
    app: Flask,
    client: FlaskClient,
    runner: Any,
    everything: Everything,
    headers: dict[str, str],
) -> None:
    """Erase the device or its account one of the ways the service offers."""
    account = everything.account_id
    if how == "staff_erases_the_device":
        response = client.delete(f"/v1/admin/devices/{everything.device['id']}", headers=headers)
    elif how == "the_app_unregisters":
        response = client.delete("/v1/devices/me", headers=bearer(everything.token))
    elif how == "staff_erase_the_account":
        response = client.delete(f"/v1/admin/accounts/{account}", headers=headers)
    else:
        terminated = client.post(f"/v1/admin/accounts/{account}/terminate", headers=headers)
        assert terminated.status_code in (200, 202)
        backdate_termination(app, account, days=app.config["PURGE_AFTER_DAYS"] + 1)
        result = runner.invoke(args=["privacy", "purge"])
        assert result.exit_code == 0, result.output
        return
    assert response.status_code == 204


@pytest.mark.parametrize(
    "how",
    [
        "staff_erases_the_device",
        "the_app_unregisters",
        "staff_erase_the_account",
        "the_purge_after_termination",
    ],
)
def test_erasure_leaves_none_of_the_identifiers_tokens_or_account_id_anywhere(
    app: Flask,
    client: FlaskClient,
    runner: Any,
    device_with_everything: Everything,
    staff: Staff,  # noqa: F811
    how: str,
) -> None:
    everything = device_with_everything
    # Before: every needle is stored somewhere (the device token only as its hash).
    stored = {needle for _, needle in rows_mentioning(app, *everything.needles)}
    assert stored == set(everything.needles) - {everything.token}

    _erase(how, app, client, runner, everything, staff("privacy"))

    assert rows_mentioning(app, *everything.needles) == []
    assert not any(_device_rows(app, everything.device["id"]).values())
    # The campaign stays, aimed at nobody else: the erased ids became keyed hashes (removing
    # them could leave an empty list, which means "no filter").
    with app.app_context():
        (audience,) = db.session.scalars(sa.select(Campaign.audience)).all()
        db.session.remove()
    assert [re.sub("[0-9a-f]{64}", "H", v) for v in audience["device_ids"]] == ["erased:H"]
    assert [re.sub("[0-9a-f]{64}", "H", v) for v in audience["account_ids"]] == ["erased:H"]


def test_a_keyed_hash_column_without_a_scrubber_stops_the_erasure(
    app: Flask, device_with_everything: Everything, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(erasure._SCRUBBERS, ("campaigns", "audience"))
    device_id = device_with_everything.device["id"]

    with app.app_context():
        with pytest.raises(LookupError):
            privacy.erase_device(db.session, device_id, CLI, reason="user_request")
        db.session.rollback()
        assert db.session.get(Device, device_id) is not None
        db.session.remove()
