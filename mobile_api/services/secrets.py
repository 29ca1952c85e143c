"""Random secrets and their stored form."""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "mk_"
DEVICE_TOKEN_PREFIX = "dt_"  # noqa: S105 - a prefix, not a secret


def new_secret(prefix: str) -> str:
    """A fresh secret: 256 random bits, URL-safe, with a prefix that says what it is."""
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The stored form of a secret: SHA-256, enough for 256-bit random secrets."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    """Compare a presented secret with a stored hash in constant time."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def keyed_hash(key: str, value: str) -> str:
    """HMAC-SHA256 of a value under the service key (names erased ids in the audit trail)."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()
