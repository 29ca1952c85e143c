"""Aggregate insights over active devices: no per-device data, no group under 5 devices."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from mobile_api.services import Db
from models import (
    LOCATION_ALLOWED,
    AccountTermination,
    Device,
    DeviceVersionChange,
    PushPermission,
    VersionField,
    utcnow,
)

MIN_GROUP_SIZE = 5
OTHER = "other"
SEEN_WITHIN_DAYS = (1, 7, 30)
VERSION_CHANGE_WINDOW_DAYS = 30

_PUSH_GRANTED = (PushPermission.GRANTED.value, PushPermission.PROVISIONAL.value)


def active_devices() -> sa.ColumnElement[bool]:
    """Devices that count: not disabled, and their account (if any) not terminated."""
    terminated = sa.exists().where(AccountTermination.account_id == Device.account_id)
    return sa.and_(Device.disabled_at.is_(None), ~terminated)


def _count_if(condition: sa.ColumnElement[bool], label: str) -> sa.Label[Any]:
    return sa.func.sum(sa.case((condition, 1), else_=0)).label(label)


def _rate(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def _opt_in(count: int, total: int) -> dict[str, Any]:
    """A purpose's opt-in count and rate, or nulls if either side is a group under MIN_GROUP_SIZE.

    Among 3 active devices, a rate of 1.0 is each user's choice; among 40, 39 of them
    opted in says how the one left chose. The opted-out side is read off the total,
    so it is a group like the opted-in side and is withheld like the small breakdowns.
    """
    if 0 < count < MIN_GROUP_SIZE or 0 < total - count < MIN_GROUP_SIZE:
        return {"devices": None, "rate": None}
    return {"devices": count, "rate": _rate(count, total)}


def fold(counts: Counter[Any], other: Hashable) -> list[tuple[Any, int]]:
    """Groups by size, largest first, with every group under MIN_GROUP_SIZE folded into `other`.

    If the folded remainder is itself under the threshold, the next smallest groups
    join it until it is not (its size could otherwise be read off the total).
    """
    groups = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    shown = [group for group in groups if group[1] >= MIN_GROUP_SIZE]
    folded = sum(n for _, n in groups) - sum(n for _, n in shown)
    while 0 < folded < MIN_GROUP_SIZE and shown:
        folded += shown.pop()[1]
    return shown + ([(other, folded)] if folded else [])


def _breakdown(
    rows: list[Any], key: Callable[[Any], Any], names: tuple[str, ...]
) -> list[dict[str, Any]]:
    counts: Counter[Any] = Counter()
    for row in rows:
        counts[key(row)] += row.devices
    other = (OTHER,) * len(names)
    return [
        {**dict(zip(names, group, strict=True)), "devices": n} for group, n in fold(counts, other)
    ]


def device_aggregate_statement(now: datetime) -> sa.Select[Any]:
    """One pass over the active devices, grouped by platform, OS and app version."""
    return (
        sa.select(
            Device.platform,
            Device.os_version,
            Device.app_version,
            sa.func.count().label("devices"),
            _count_if(Device.promotional_push.is_(True), "promotional_push"),
            _count_if(Device.location_services.is_(True), "location_services"),
            _count_if(Device.analytics.is_(True), "analytics"),
            _count_if(Device.push_permission.in_(_PUSH_GRANTED), "os_push_permission"),
            _count_if(Device.location_permission.in_(LOCATION_ALLOWED), "os_location_permission"),
            *(
                _count_if(Device.last_seen_at >= now - timedelta(days=days), f"seen_{days}")
                for days in SEEN_WITHIN_DAYS
            ),
        )
        .where(active_devices())
        .group_by(Device.platform, Device.os_version, Device.app_version)
    )


def device_insights(session: Db, now: datetime | None = None) -> dict[str, Any]:
    """Active devices by platform, OS and app version; opt-in rates; recency; version changes."""
    now = now or utcnow()
    # One pass over the devices, grouped as finely as any breakdown needs; the
    # coarser breakdowns and the totals are summed from these rows in Python.
    stmt = device_aggregate_statement(now)
    rows = list(session.execute(stmt))
    total = sum(row.devices for row in rows)

    def summed(column: str) -> int:
        return sum(int(getattr(row, column)) for row in rows)

    purposes = (
        "promotional_push",
        "location_services",
        "analytics",
        "os_push_permission",
        "os_location_permission",
    )
    return {
        "generated_at": now,
        "min_group_size": MIN_GROUP_SIZE,
        "active_devices": total,
        "by_platform": _breakdown(rows, lambda r: (r.platform,), ("platform",)),
        "by_os_version": _breakdown(
            rows, lambda r: (r.platform, r.os_version), ("platform", "os_version")
        ),
        "by_app_version": _breakdown(
            rows, lambda r: (r.platform, r.app_version), ("platform", "app_version")
        ),
        "opt_in": {purpose: _opt_in(summed(purpose), total) for purpose in purposes},
        "seen_within_days": {str(days): summed(f"seen_{days}") for days in SEEN_WITHIN_DAYS},
        "version_changes": _version_changes(session, now),
    }


def _version_changes(session: Db, now: datetime) -> dict[str, Any]:
    since = now - timedelta(days=VERSION_CHANGE_WINDOW_DAYS)
    # Per device first, then per field: PostgreSQL sorts for count(DISTINCT …) but
    # can hash a GROUP BY, which is several times faster over a month of changes.
    per_device = (
        sa.select(DeviceVersionChange.field, sa.func.count().label("changes"))
        .where(DeviceVersionChange.changed_at >= since)
        .group_by(DeviceVersionChange.field, DeviceVersionChange.device_id)
        .subquery()
    )
    stmt = sa.select(
        per_device.c.field,
        sa.func.sum(per_device.c.changes).label("changes"),
        sa.func.count().label("devices"),
    ).group_by(per_device.c.field)
    found = {row.field: row for row in session.execute(stmt)}
    result: dict[str, Any] = {"days": VERSION_CHANGE_WINDOW_DAYS}
    for field in VersionField:
        row = found.get(field.value)
        devices = row.devices if row else 0
        if 0 < devices < MIN_GROUP_SIZE:
            # Like the breakdowns: a group this small could single someone out.
            result[field.value] = {"changes": None, "devices": None}
        else:
            result[field.value] = {
                "changes": int(row.changes) if row else 0,
                "devices": devices,
            }
    return result
