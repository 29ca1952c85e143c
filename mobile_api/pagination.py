"""Keyset pagination with opaque cursors (`?limit=`, `?cursor=`, `next_cursor`)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

import marshmallow as ma
import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

from mobile_api.errors import InvalidCursor
from mobile_api.routes.fields import UNSTORABLE_TEXT
from mobile_api.services import Db

T = TypeVar("T")

_MIN_KEY, _MAX_KEY = -(2**63), 2**63 - 1

# What encode_cursor writes: unpadded URL-safe base64.
CURSOR_PATTERN = re.compile(r"^[A-Za-z0-9_-]*$")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class PageArgsSchema(ma.Schema):
    """Query arguments of every list endpoint."""

    limit = ma.fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=ma.validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Page size, 1–{MAX_LIMIT} (default {DEFAULT_LIMIT})"},
    )
    cursor = ma.fields.String(
        load_default=None,
        validate=ma.validate.Length(max=200),
        metadata={
            "description": "Opaque cursor from the previous page's next_cursor "
            "(422 invalid_cursor if it is not one)",
            "pattern": CURSOR_PATTERN.pattern,
        },
    )


def page_schema(item: type[ma.Schema], name: str) -> type[ma.Schema]:
    """The schema of one page of a list endpoint: `items` and `next_cursor` (null at the end)."""
    return ma.Schema.from_dict(
        {
            "items": ma.fields.List(ma.fields.Nested(item), required=True),
            "next_cursor": ma.fields.String(allow_none=True, required=True),
        },
        name=name,
    )


def encode_cursor(value: Any) -> str:
    """Wrap the last key of a page into an opaque cursor."""
    return base64.urlsafe_b64encode(json.dumps([value]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: type) -> Any:
    """Unwrap a cursor, refusing anything this service did not make."""
    if not CURSOR_PATTERN.match(cursor):
        # b64decode would skip the characters it does not know instead.
        raise InvalidCursor()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        (value,) = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise InvalidCursor() from exc
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidCursor()
    # Keys this service made are BIGINTs and storable text; anything else would
    # only reach the database to fail there.
    if isinstance(value, int) and not _MIN_KEY <= value <= _MAX_KEY:
        raise InvalidCursor()
    if isinstance(value, str) and UNSTORABLE_TEXT.search(value):
        raise InvalidCursor()
    return value


def paginate(
    session: Db,
    stmt: sa.Select[tuple[T]],
    key: InstrumentedAttribute[Any],
    limit: int,
    cursor: str | None,
    *,
    descending: bool = False,
    within: InstrumentedAttribute[Any] | None = None,
) -> tuple[Sequence[T], str | None]:
    """One page of `stmt` ordered by the unique column `key`, and the next cursor.

    `within`: a column `stmt` holds to one value, named first in the ORDER BY so that
    an index on (within, key) can return the page in order (see deliveries_query).
    """
    python_type = key.type.python_type
    if cursor is not None:
        last = decode_cursor(cursor, python_type)
        stmt = stmt.where(key < last if descending else key > last)
    order = key.desc() if descending else key.asc()
    stmt = stmt.order_by(*([] if within is None else [within]), order).limit(limit + 1)
    rows = list(session.scalars(stmt).all())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(getattr(rows[-1], key.key))
