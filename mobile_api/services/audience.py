"""Audience filters and deliverability as SQL, shared by preview, dispatch and explain."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from models import (
    PROMOTIONS,
    SERVICE,
    AccountTermination,
    CampaignCategory,
    CategoryKind,
    CategoryPreference,
    Device,
    PushPermission,
)

# Exclusion reasons, in the order they are tested: a device is counted under the
# first that applies, so eligible + sum(excluded) = devices matching the filters.
EXCLUSION_REASONS = (
    "disabled",
    "account_terminated",
    "no_push_token",
    "invalid_push_token",
    "push_permission_denied",
    "promotional_opt_out",
    "category_opt_out",
)
CATEGORY_OPT_OUT = "category_opt_out"
ERASED = "erased"  # only at dispatch: the device was erased after it was targeted

_LEADING_VERSION = re.compile(r"^[0-9]+(?:\.[0-9]+)*")
_WIDTH = 9  # digits per version component in the SQLite sort key


def version_parts(text: str) -> tuple[int, ...] | None:
    """The numeric dotted prefix of a version (`17.4.1-beta` → (17, 4, 1)), or None."""
    match = _LEADING_VERSION.match(text)
    if match is None:
        return None
    return tuple(int(part) for part in match.group(0).split("."))


def threshold_parts(text: str) -> tuple[int, ...]:
    """A minimum version without trailing zero components, so `10.0` admits `10`."""
    parts = list(version_parts(text) or (0,))
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_key(text: str | None) -> str | None:
    """A string that sorts like the version: fixed-width components, dot-joined."""
    if text is None:
        return None
    parts = version_parts(text)
    if parts is None:
        return None
    ceiling = 10**_WIDTH - 1
    return ".".join(str(min(part, ceiling)).zfill(_WIDTH) for part in parts)


class version_at_least(FunctionElement[bool]):  # noqa: N801 - reads as the SQL function it is
    """`column >= minimum` compared as versions (10.0 > 9.3), inside SQL."""

    type = sa.Boolean()
    inherit_cache = True
    name = "version_at_least"

    def __init__(self, column: Any, minimum: str) -> None:
        # The threshold travels as an ordinary bound parameter, so cached
        # statements stay correct whatever minimum the next query uses.
        normalised = ".".join(str(part) for part in threshold_parts(minimum))
        super().__init__(column, sa.literal(normalised, sa.String))


@compiles(version_at_least)
def _version_at_least_sqlite(element: Any, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite: fixed-width sort keys from version_key(), a function registered on
    # every connection (see register_sqlite_functions).
    column, minimum = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(version_key({column}) >= version_key({minimum}))"


@compiles(version_at_least, "postgresql")
def _version_at_least_postgresql(element: Any, compiler: SQLCompiler, **kw: Any) -> str:
    # PostgreSQL compares arrays element by element; numeric[] cannot overflow.
    column, minimum = (compiler.process(clause, **kw) for clause in element.clauses)
    prefix = f"substring({column} from '{_LEADING_VERSION.pattern}')"
    return (
        f"(string_to_array({prefix}, '.')::numeric[] >= string_to_array({minimum}, '.')::numeric[])"
    )


def register_sqlite_functions(engine: sa.Engine) -> None:
    """Give every SQLite connection the version_key() function the filters use."""
    if engine.dialect.name != "sqlite":
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.create_function("version_key", 1, version_key, deterministic=True)


def terminated() -> ColumnElement[bool]:
    """True when the device's account is terminated (needs the outer join below)."""
    return AccountTermination.account_id.is_not(None)


def with_terminations(stmt: sa.Select[Any]) -> sa.Select[Any]:
    """Outer-join the account terminations of the selected devices."""
    return stmt.outerjoin(AccountTermination, AccountTermination.account_id == Device.account_id)


@dataclass(frozen=True, slots=True)
class CategoryRule:
    """What consent a notification category needs (see API.md, notification categories)."""

    key: str
    kind: str
    default_enabled: bool = False


# v1's `category` of a campaign stands for one of the built-in categories.
V1_RULES = {
    CampaignCategory.PROMOTIONAL.value: CategoryRule(PROMOTIONS, CategoryKind.PROMOTIONAL),
    CampaignCategory.SERVICE.value: CategoryRule(SERVICE, CategoryKind.SERVICE, True),
}


def deliverability_whens() -> list[tuple[ColumnElement[bool], str]]:
    """Why a device may get no push at all now, as CASE branches in EXCLUSION_REASONS order."""
    return [
        (Device.disabled_at.is_not(None), "disabled"),
        (terminated(), "account_terminated"),
        (Device.push_token.is_(None), "no_push_token"),
        (Device.push_token_invalid_at.is_not(None), "invalid_push_token"),
        (Device.push_permission == PushPermission.DENIED, "push_permission_denied"),
    ]


def category_preference(key: str) -> ColumnElement[bool | None]:
    """The device's stored choice for a category, or NULL when it never chose."""
    return (
        sa.select(CategoryPreference.enabled)
        .where(CategoryPreference.device_id == Device.id, CategoryPreference.category_key == key)
        .scalar_subquery()
    )


def consent_whens(rule: CategoryRule) -> list[tuple[ColumnElement[bool], str]]:
    """Why a deliverable device may not get this category now, as CASE branches.

    Promotional: `promotional_push` is the master switch (and the preference of
    `promotions` itself); any other promotional category also needs its own
    preference, default off. Transactional: its own preference, default
    `default_enabled`. Service: none.
    """
    if rule.kind == CategoryKind.PROMOTIONAL:
        whens = [(sa.not_(Device.promotional_push), "promotional_opt_out")]
        if rule.key != PROMOTIONS:
            chosen = sa.func.coalesce(category_preference(rule.key), sa.false())
            whens.append((sa.not_(chosen), CATEGORY_OPT_OUT))
        return whens
    if rule.kind == CategoryKind.TRANSACTIONAL:
        default = sa.true() if rule.default_enabled else sa.false()
        chosen = sa.func.coalesce(category_preference(rule.key), default)
        return [(sa.not_(chosen), CATEGORY_OPT_OUT)]
    return []


def exclusion_reason(
    category: str | CategoryRule,
    extra: Sequence[tuple[ColumnElement[bool], str]] = (),
) -> ColumnElement[str | None]:
    """Why a device may not get a push of this category now, or NULL when it may.

    `category` is a category's rule, or v1's campaign category (its built-in);
    `extra` reasons (frequency caps) are tested after deliverability and consent.
    """
    rule = V1_RULES[category] if isinstance(category, str) else category
    return sa.case(*deliverability_whens(), *consent_whens(rule), *extra, else_=sa.null())


def _locale_filter(locales: list[str]) -> ColumnElement[bool]:
    """Exact tags, and a bare language (`id`) also matches its regional tags (`id-ID`)."""
    conditions: list[ColumnElement[bool]] = [Device.locale.in_(locales)]
    conditions += [Device.locale.like(f"{tag}-%") for tag in locales if "-" not in tag]
    return sa.or_(*conditions)


def filters(audience: Mapping[str, Any], as_of: datetime) -> dict[str, ColumnElement[bool]]:
    """One SQL condition per audience filter that is set, keyed by filter name."""
    conditions: dict[str, ColumnElement[bool]] = {}
    if audience.get("platforms"):
        conditions["platforms"] = Device.platform.in_(audience["platforms"])
    if audience.get("app_versions"):
        conditions["app_versions"] = Device.app_version.in_(audience["app_versions"])
    if audience.get("min_os_version"):
        conditions["min_os_version"] = version_at_least(
            Device.os_version, audience["min_os_version"]
        )
    if audience.get("locales"):
        conditions["locales"] = _locale_filter(audience["locales"])
    if audience.get("account_ids"):
        conditions["account_ids"] = Device.account_id.in_(audience["account_ids"])
    if audience.get("device_ids"):
        conditions["device_ids"] = Device.id.in_(audience["device_ids"])
    if audience.get("last_seen_within_days") is not None:
        since = as_of - timedelta(days=audience["last_seen_within_days"])
        conditions["last_seen_within_days"] = Device.last_seen_at >= since
    return conditions


def matches(audience: Mapping[str, Any], as_of: datetime) -> ColumnElement[bool]:
    """All audience filters at once (true when none is set)."""
    return sa.and_(sa.true(), *filters(audience, as_of).values())
