"""Device registration, check-in, preferences, the consent ledger and self-service erasure."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from mobile_api.errors import InstallationExists, PushProviderMismatch
from mobile_api.push import APNS, APNS_SANDBOX, FCM
from mobile_api.services import (
    Db,
    categories,
    commit_keeping_state,
    consent,
    is_postgresql,
    privacy,
    telemetry,
)
from mobile_api.services.caller import Caller
from mobile_api.services.secrets import (
    DEVICE_TOKEN_PREFIX,
    hash_secret,
    matches,
    new_secret,
)
from models import (
    PREFERENCES,
    ConsentRecord,
    ConsentSource,
    Device,
    LocationPermission,
    Platform,
    Purpose,
    PushPermission,
    new_id,
    utcnow,
)

# Fields the app may change on check-in; None clears the optional ones.
CHECK_IN_FIELDS = (
    "os_version",
    "device_model",
    "app_version",
    "locale",
    "timezone",
    "push_token",
    "push_permission",
    "location_permission",
    "account_id",
    "push_provider",
)
_OS_PERMISSIONS = {
    "push_permission": (Purpose.OS_PUSH_PERMISSION, PushPermission.DENIED),
    "location_permission": (Purpose.OS_LOCATION_PERMISSION, LocationPermission.DENIED),
}
_devices = cast(sa.Table, Device.__table__)
_INSERT_COLUMNS = tuple(column.key for column in _devices.columns)
# SET takes the columns named by the parameters of each execution.
_UPDATE_DEVICE = sa.update(_devices).where(_devices.c.id == sa.bindparam("device_id"))
_ATTEMPTS = 3  # a push-token race with another registration is retried this often
_APNS_PROVIDERS = frozenset({APNS, APNS_SANDBOX})
_APNS_TOKEN = re.compile(r"^[0-9a-fA-F]{64,}$")


@dataclass(frozen=True, slots=True)
class Registration:
    """The outcome of POST /v1/devices."""

    device: Device
    device_token: str
    created: bool


@functools.cache
def _insert_statement() -> sa.TextualSelect:
    """INSERT … ON CONFLICT (installation_id) DO NOTHING RETURNING id, built once.

    Written as typed text because SQLAlchemy never caches the compiled form of its
    dialect-specific ON CONFLICT inserts: compiling that 24-column statement anew was
    a sixth of a registration's CPU. The SQL is the same on SQLite and PostgreSQL.
    """
    table = _devices
    names = ", ".join(column.name for column in table.columns)
    params = ", ".join(f":{column.key}" for column in table.columns)
    return (
        sa.text(
            f"INSERT INTO {table.name} ({names}) VALUES ({params})"  # noqa: S608 (our metadata)
            " ON CONFLICT (installation_id) DO NOTHING RETURNING id"
        )
        .bindparams(*(sa.bindparam(column.key, type_=column.type) for column in table.columns))
        .columns(table.c.id)
    )


def _insert_or_ignore(session: Db, values: dict[str, Any]) -> str | None:
    """INSERT the device unless its installation_id exists; the new id, or None."""
    return session.execute(_insert_statement(), values).scalar_one_or_none()


def _release_push_token(session: Db, push_token: str, keep_device_id: str | None) -> None:
    """Take a push token away from whichever other device holds it."""
    token_hash = hash_secret(push_token)
    if is_postgresql(session):
        # Concurrent claims of one token queue up here until the claimant's
        # commit, so the last claimant holds it (registration reaches this only
        # after the unique index reported the token held elsewhere).
        session.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": "push_token:" + token_hash},
        )
    stmt = (
        sa.update(Device)
        .where(Device.push_token_hash == token_hash)
        .values(push_token=None, push_token_hash=None, push_token_invalid_at=None)
    )
    if keep_device_id is not None:
        stmt = stmt.where(Device.id != keep_device_id)
    session.execute(stmt)


def _record_os_permissions(
    session: Db, device_id: str, reported: Mapping[str, Any], current: Device | None
) -> None:
    """Record each OS permission the app reports that differs from what is stored."""
    for field, (purpose, denied) in _OS_PERMISSIONS.items():
        value = reported.get(field)
        if value is not None and (current is None or value != getattr(current, field)):
            consent.record(session, device_id, purpose, value != denied, ConsentSource.OS_SETTINGS)


def check_push_provider(current: Device | None, data: Mapping[str, Any]) -> None:
    """Refuse a provider, token and platform that do not belong together (422).

    APNs tokens (apns, apns_sandbox) are for iOS and are 64+ hex characters; a
    device that changes provider must send the new provider's token with it, so an
    FCM token is never taken for an APNs one (or the other way round).
    """
    provider = data.get("push_provider", current.push_provider if current else FCM)
    platform = data.get("platform", current.platform if current else None)
    errors: dict[str, list[str]] = {}
    if provider in _APNS_PROVIDERS and platform != Platform.IOS:
        errors["push_provider"] = [f"{provider} is for platform ios only."]
    if current is not None and provider != current.push_provider and "push_token" not in data:
        errors["push_token"] = ["A change of push_provider must come with its push_token."]
    token = data.get("push_token")
    if provider in _APNS_PROVIDERS and token is not None and not _APNS_TOKEN.match(token):
        errors["push_token"] = ["An APNs device token is 64 or more hexadecimal characters."]
    if errors:
        raise PushProviderMismatch(errors)


def register(session: Db, data: Mapping[str, Any], presented_token: str | None) -> Registration:
    """Register an installation, or update it when the caller proves it owns it."""
    privacy.ensure_account_open(session, data.get("account_id"))
    check_push_provider(None, data)
    # Most push tokens are new, so the first attempt just inserts; only when the
    # unique index says another device holds the token is it taken from that
    # device (under the token's lock) and the registration tried again.
    release = False
    for attempt in range(_ATTEMPTS):
        try:
            return _register_once(session, data, presented_token, release_push_token=release)
        except IntegrityError:
            session.rollback()
            release = True
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _register_once(
    session: Db,
    data: Mapping[str, Any],
    presented_token: str | None,
    *,
    release_push_token: bool,
) -> Registration:
    token = new_secret(DEVICE_TOKEN_PREFIX)
    now = utcnow()
    push_token = data.get("push_token")
    if push_token and release_push_token:
        _release_push_token(session, push_token, keep_device_id=None)
    values: dict[str, Any] = dict.fromkeys(_INSERT_COLUMNS)
    values |= {
        "id": new_id(),
        "installation_id": data["installation_id"],
        "token_hash": hash_secret(token),
        "platform": data["platform"],
        "os_version": data["os_version"],
        "push_token_hash": hash_secret(push_token) if push_token else None,
        "created_at": now,
        "updated_at": now,
        "last_seen_at": now,
        "promotional_push": False,
        "location_services": False,
        "analytics": False,
        "push_provider": FCM,
    }
    for field in CHECK_IN_FIELDS:
        if field in data:
            values[field] = data[field]
    device_id = _insert_or_ignore(session, values)
    if device_id is not None:
        _record_os_permissions(session, device_id, data, current=None)
        session.commit()
        # The row is exactly `values`: attach an instance built from them instead of
        # reading it back, so callers get a persistent device without another SELECT.
        device = Device(**values)
        make_transient_to_detached(device)
        session.add(device)
        return Registration(device, token, created=True)

    existing = session.scalars(
        sa.select(Device).where(Device.installation_id == data["installation_id"])
    ).one()
    if presented_token is None or not matches(presented_token, existing.token_hash):
        session.rollback()
        raise InstallationExists()
    try:
        check_push_provider(existing, data)
    except PushProviderMismatch:
        session.rollback()
        raise
    changes = {field: data[field] for field in CHECK_IN_FIELDS if field in data}
    changes["platform"] = data["platform"]
    # Rotation: the old token stops working with this commit.
    _apply_check_in(session, existing, changes, now, also={"token_hash": hash_secret(token)})
    commit_keeping_state(session)
    return Registration(existing, token, created=False)


def check_in(session: Db, device: Device, changes: Mapping[str, Any]) -> Device:
    """Apply a check-in: new OS facts, permissions and push token; mark the device seen."""
    privacy.ensure_account_open(session, changes.get("account_id"))
    check_push_provider(device, changes)
    for attempt in range(_ATTEMPTS):
        try:
            _apply_check_in(session, device, changes, utcnow())
            commit_keeping_state(session)
            return device
        except IntegrityError:
            session.rollback()
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _apply_check_in(
    session: Db,
    device: Device,
    changes: Mapping[str, Any],
    now: Any,
    also: Mapping[str, Any] | None = None,
) -> None:
    """Write a check-in's changes (and `also`, more columns) and show them on `device`."""
    telemetry.record_version_change(session, device, changes, now)
    _record_os_permissions(session, device.id, changes, current=device)
    values: dict[str, Any] = {}
    if "push_token" in changes and changes["push_token"] != device.push_token:
        new_token = changes["push_token"]
        if new_token:
            _release_push_token(session, new_token, keep_device_id=device.id)
        values["push_token"] = new_token
        values["push_token_hash"] = hash_secret(new_token) if new_token else None
        values["push_token_invalid_at"] = None
    values |= {field: value for field, value in changes.items() if field != "push_token"}
    values |= also or {}
    values["last_seen_at"] = now
    values["updated_at"] = now
    # One UPDATE of exactly these columns (its compiled form is cached per column set),
    # then the values set on the instance as already stored: a unit-of-work flush of
    # the same change was a fifth of a check-in's CPU.
    session.execute(_UPDATE_DEVICE, {"device_id": device.id, **values})
    for field, value in values.items():
        set_committed_value(device, field, value)


def preferences(session: Db, device: Device) -> dict[str, Any]:
    """The preferences document: the three v1 choices, category choices, quiet hours."""
    return {
        **device.preferences(),
        "categories": categories.choices(session, device),
        "quiet_hours": categories.quiet_hours(device),
    }


_KEEP = object()  # update_preferences: quiet hours not given, leave them as they are


def update_preferences(
    session: Db,
    device: Device,
    choices: Mapping[str, bool],
    policy_version: str | None,
    source: str = ConsentSource.APP,
    *,
    category_choices: Mapping[str, bool] | None = None,
    quiet_hours: Any = _KEEP,
) -> dict[str, Any]:
    """Change preferences; each actual change of a consent appends one consent record.

    `quiet_hours` ({"start", "end"} or None) is a setting, not a consent: no record.
    """
    categories.set_choices(session, device, category_choices or {}, policy_version, source)
    for purpose in PREFERENCES:
        wanted = choices.get(purpose.value)
        if wanted is None or wanted == getattr(device, purpose.value):
            continue
        setattr(device, purpose.value, wanted)
        consent.record(session, device.id, purpose.value, wanted, source, policy_version)
        if purpose is Purpose.ANALYTICS and not wanted:
            # Withdrawn: what was collected under the consent goes with it, in the same commit.
            telemetry.forget(session, device.id)
    if quiet_hours is not _KEEP:
        device.quiet_hours_start = quiet_hours["start"] if quiet_hours else None
        device.quiet_hours_end = quiet_hours["end"] if quiet_hours else None
    commit_keeping_state(session)
    return preferences(session, device)


def consents_query(device_id: str) -> sa.Select[tuple[ConsentRecord]]:
    """The device's consent history, oldest first (for keyset pagination on id)."""
    return sa.select(ConsentRecord).where(ConsentRecord.device_id == device_id)


def erase(session: Db, device_id: str, caller: Caller) -> bool:
    """The app unregisters: erase the device through the one privacy erasure path."""
    # The trail outlives the device, so it names the actor only as "device", not by its id.
    anonymous = Caller(actor="device", role=caller.role, request_id=caller.request_id)
    return privacy.erase_device(session, device_id, anonymous, reason="unregistered")
