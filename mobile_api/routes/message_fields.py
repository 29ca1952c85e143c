"""Fields of a message that campaigns and notifications share: text, data, links, ids."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import marshmallow as ma

from mobile_api.routes.fields import printable

DEVICE_ID = ma.validate.Regexp(r"^[0-9A-Z]{26}$", error="A device id.")
CATEGORY_KEY = ma.validate.Regexp(r"^[a-z][a-z0-9_]{1,39}$", error="A category key.")

# FCM refuses these data keys.
_RESERVED_DATA_KEY = re.compile(r"^(from|message_type|notification|google.*|gcm.*)$")
_MAX_DATA_BYTES = 4096


def validate_data(data: dict[str, str]) -> None:
    """A message's data: no key FCM reserves, at most 4 KiB of keys and values."""
    for key in data:
        if _RESERVED_DATA_KEY.match(key):
            raise ma.ValidationError(f"{key!r} is a key reserved by FCM.")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > _MAX_DATA_BYTES:
        raise ma.ValidationError(f"At most {_MAX_DATA_BYTES} bytes of keys and values.")


def https_url(value: str) -> None:
    """An absolute https:// URL (images, deep links on the web)."""
    try:
        parsed = urlsplit(value)
    except ValueError:  # an IPv6 host's bracket left open, "https://["
        parsed = None
    if parsed is None or parsed.scheme != "https" or not parsed.netloc:
        raise ma.ValidationError("An https:// URL.")


class TextSchema(ma.Schema):
    """A message's text in one language."""

    title = ma.fields.String(required=True, validate=printable(200))
    body = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=2000))
