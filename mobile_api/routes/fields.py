"""Field validators shared by the request schemas."""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC
from functools import cache
from typing import Any

import marshmallow as ma

# Letters, digits and ordinary punctuation; no control characters or newlines
# (free text must not be able to forge log lines or smuggle markup).
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
# A pragmatic BCP 47 subset: language, optional script, region and variants.
_BCP47 = re.compile(
    r"^[A-Za-z]{2,3}(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"
    r"(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*$"
)

# An app or OS version as devices report it; campaign audiences match the same form.
VERSION = ma.validate.Regexp(
    r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,31}$", error="Up to 32 characters, e.g. 17.4.1."
)

# A wall-clock time, "HH:MM" (quiet hours, a campaign's local time).
CLOCK = ma.validate.Regexp(r"^([01][0-9]|2[0-3]):[0-5][0-9]$", error="HH:MM, 00:00–23:59.")


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def printable(max_length: int, min_length: int = 1) -> list[ma.validate.Validator]:
    """Length bounds plus no control characters."""
    return [
        ma.validate.Length(min=min_length, max=max_length),
        ma.validate.Regexp(_PRINTABLE, error="Must not contain control characters."),
    ]


def validate_time_zone(value: str) -> None:
    """An IANA time zone name, e.g. Asia/Jakarta."""
    if value not in _time_zones():
        raise ma.ValidationError("Not a known IANA time zone name.")


class Locale(ma.fields.String):
    """A BCP 47 language tag, returned in canonical case (id-ID, zh-Hant-TW)."""

    def _deserialize(self, value: object, attr: str | None, data: object, **kwargs: object) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > 35 or not _BCP47.match(text):
            raise ma.ValidationError("Not a BCP 47 language tag, e.g. id-ID.")
        parts = text.split("-")
        canonical = [parts[0].lower()]
        for part in parts[1:]:
            if len(part) == 4 and part.isalpha():
                canonical.append(part.title())
            elif len(part) == 2 and part.isalpha():
                canonical.append(part.upper())
            else:
                canonical.append(part.lower())
        return "-".join(canonical)


class StrictBoolean(ma.fields.Boolean):
    """A JSON boolean only: "yes", 1 and "true" are refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Timestamp(ma.fields.DateTime):
    """An RFC 3339 UTC timestamp written with a `Z` suffix."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return str(value.astimezone(UTC).isoformat().replace("+00:00", "Z"))
