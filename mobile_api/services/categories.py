"""Notification categories: the catalogue, who may get which, and each device's choices.

A category's kind decides the consent it needs (audience.consent_whens holds the
rule as SQL, shared by preview, dispatch and explain); `refusal` asks that same
rule about one device now. A device's choices are kept twice on purpose: the
current one in `device_category_preferences`, the history in the consent ledger
(purpose `category:<key>`), written together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from mobile_api.errors import (
    CategoryKindImmutable,
    CategoryNotChangeable,
    CategorySettingsInvalid,
    UnknownCategory,
)
from mobile_api.services import Db, audit, consent, dialect_insert, export
from mobile_api.services import audience as aud
from mobile_api.services.caller import Caller
from models import (
    PROMOTIONS,
    SERVICE,
    Category,
    CategoryKind,
    CategoryPreference,
    ConsentSource,
    Device,
    utcnow,
)

KEY_PATTERN = r"^[a-z][a-z0-9_]{1,39}$"
_FIELDS = (
    "name",
    "kind",
    "default_enabled",
    "user_can_opt_out",
    "android_channel_id",
    "ios_interruption_level",
)


# The built-ins as the migration seeds them (tests restore them after wiping tables).
BUILT_INS = (
    {
        "key": PROMOTIONS,
        "name": "Promotions",
        "kind": CategoryKind.PROMOTIONAL.value,
        "default_enabled": False,
        "user_can_opt_out": True,
        "android_channel_id": "promotions",
        "ios_interruption_level": "passive",
    },
    {
        "key": SERVICE,
        "name": "Service announcements",
        "kind": CategoryKind.SERVICE.value,
        "default_enabled": True,
        "user_can_opt_out": False,
        "android_channel_id": "service",
        "ios_interruption_level": "active",
    },
)


def ensure_built_ins(session: Db) -> None:
    """Insert the built-in categories where missing, and commit."""
    now = utcnow()
    for values in BUILT_INS:
        session.execute(
            dialect_insert(session)(Category)
            .values(created_at=now, updated_at=now, **values)
            .on_conflict_do_nothing(index_elements=[Category.key])
        )
    session.commit()


def list_all(session: Db) -> list[Category]:
    """Every category, by key."""
    return list(session.scalars(sa.select(Category).order_by(Category.key)).all())


def get(session: Db, key: str) -> Category:
    """The category, or 422 unknown_category (callers name it in a body)."""
    category = session.get(Category, key)
    if category is None:
        raise UnknownCategory(f"No notification category {key!r}.")
    return category


def rule(category: Category) -> aud.CategoryRule:
    """The consent rule of a category, as the SQL of audience.exclusion_reason takes it."""
    return aud.CategoryRule(category.key, category.kind, category.default_enabled)


def put(
    session: Db,
    key: str,
    data: Mapping[str, Any],
    caller: Caller,
) -> tuple[Category, bool]:
    """Create or update a category (admin); (category, created). Its kind never changes."""
    values = dict(data)
    kind = values["kind"]
    values.setdefault("default_enabled", False)
    values.setdefault("user_can_opt_out", kind != CategoryKind.SERVICE)
    if kind == CategoryKind.PROMOTIONAL and values["default_enabled"]:
        raise CategorySettingsInvalid("A promotional category cannot be enabled by default.")
    if kind == CategoryKind.SERVICE and values["user_can_opt_out"]:
        raise CategorySettingsInvalid("A service category cannot be opted out of.")
    if kind == CategoryKind.PROMOTIONAL and not values["user_can_opt_out"]:
        raise CategorySettingsInvalid("A promotional category can always be opted out of.")
    now = utcnow()
    # Insert-or-nothing first: of two concurrent creations one inserts, the other
    # updates, and neither answers 500.
    created = session.execute(
        dialect_insert(session)(Category)
        .values(key=key, created_at=now, updated_at=now, **values)
        .on_conflict_do_nothing(index_elements=[Category.key])
        .returning(Category.key)
    ).scalar_one_or_none()
    category = session.get(Category, key, with_for_update=True, populate_existing=True)
    assert category is not None
    if created is None:
        if category.kind != kind:
            session.rollback()
            raise CategoryKindImmutable(
                f"Category {key!r} is {category.kind}; its kind cannot change."
            )
        for field in _FIELDS:
            setattr(category, field, values[field])
        category.updated_at = now
    audit.record(
        session,
        caller,
        action="category.created" if created else "category.updated",
        target=key,
        details={field: values[field] for field in _FIELDS if field != "name"},
    )
    session.commit()
    return category, created is not None


def refusal(session: Db, device_id: str, category: Category) -> str | None:
    """Why the device may not receive a message of this category now; None when it may.

    Deliverability and consent as of this moment (API.md: a device is deliverable…);
    `erased` for an unknown device. Quiet hours and caps are the dispatcher's.
    """
    stmt = aud.with_terminations(
        sa.select(aud.exclusion_reason(rule(category))).select_from(Device)
    ).where(Device.id == device_id)
    row = session.execute(stmt).first()
    return aud.ERASED if row is None else row[0]


def may_receive(session: Db, device_id: str, category: Category) -> bool:
    """Whether the device may be handed a message of this category now."""
    return refusal(session, device_id, category) is None


def _changeable(category: Category) -> bool:
    # promotions is promotional_push itself; service categories need no consent.
    return (
        category.user_can_opt_out
        and category.key != PROMOTIONS
        and category.kind != CategoryKind.SERVICE
    )


def choices(session: Db, device: Device) -> dict[str, bool]:
    """The device's current choice for every category its user may change."""
    rows = session.execute(
        sa.select(CategoryPreference.category_key, CategoryPreference.enabled).where(
            CategoryPreference.device_id == device.id
        )
    )
    stored = {row.category_key: row.enabled for row in rows}
    result: dict[str, bool] = {}
    for category in list_all(session):
        if _changeable(category):
            default = category.kind == CategoryKind.TRANSACTIONAL and category.default_enabled
            result[category.key] = bool(stored.get(category.key, default))
    return result


def set_choices(
    session: Db,
    device: Device,
    wanted: Mapping[str, bool],
    policy_version: str | None,
    source: str = ConsentSource.APP,
) -> None:
    """Apply the user's category choices; each change appends one consent record.

    Checks every key before writing any (422 category_not_changeable); the caller commits.
    """
    if not wanted:
        return
    current = choices(session, device)
    unknown = sorted(key for key in wanted if key not in current)
    if unknown:
        session.rollback()
        raise CategoryNotChangeable(f"Not a category this device can change: {', '.join(unknown)}.")
    now = utcnow()
    for key, enabled in sorted(wanted.items()):
        if current[key] == enabled:
            continue
        session.execute(
            dialect_insert(session)(CategoryPreference)
            .values(device_id=device.id, category_key=key, enabled=enabled, updated_at=now)
            .on_conflict_do_update(
                index_elements=[CategoryPreference.device_id, CategoryPreference.category_key],
                set_={"enabled": enabled, "updated_at": now},
            )
        )
        consent.record(
            session,
            device.id,
            consent.category_purpose(key),
            enabled,
            source,
            policy_version,
            at=now,
        )


def quiet_hours(device: Device) -> dict[str, str] | None:
    """The user's own quiet hours, or None (the deployment's QUIET_HOURS apply)."""
    if device.quiet_hours_start is None or device.quiet_hours_end is None:
        return None
    return {"start": device.quiet_hours_start, "end": device.quiet_hours_end}


@export.device_section("notification_settings")
def _export_settings(session: Db, device: Device) -> dict[str, Any]:
    """The device's stored category choices (their history is under consents), quiet hours."""
    rows = session.execute(
        sa.select(CategoryPreference.category_key, CategoryPreference.enabled)
        .where(CategoryPreference.device_id == device.id)
        .order_by(CategoryPreference.category_key)
    )
    return {
        "categories": {row.category_key: row.enabled for row in rows},
        "quiet_hours": quiet_hours(device),
    }
