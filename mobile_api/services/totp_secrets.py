"""Staff authenticator (TOTP) secrets at rest: sealed with Fernet (AES-128-CBC + HMAC-SHA256).

The key is CONSOLE_TOTP_KEY (a Fernet key: 32 random bytes, URL-safe base64) when set;
otherwise it is derived from SECRET_KEY with HKDF-SHA256, so a database dump alone never
reveals a secret. Changing either key makes every enrolled authenticator unusable: staff
are then reset (`flask staff reset`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_HKDF_INFO = b"mobile_api console TOTP secrets"


def fernet(config: Mapping[str, Any]) -> Fernet:
    """The cipher of this deployment's TOTP secrets (see the module's docstring)."""
    configured = config.get("CONSOLE_TOTP_KEY")
    if configured:
        return Fernet(configured)
    secret_key = config.get("SECRET_KEY")
    if not secret_key:
        raise RuntimeError("CONSOLE_TOTP_KEY or SECRET_KEY is needed to seal TOTP secrets")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        str(secret_key).encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def check_key(configured: str) -> None:
    """Refuse a CONSOLE_TOTP_KEY that is not a Fernet key, when the app starts rather than
    at the first sign-in."""
    try:
        Fernet(configured)
    except (ValueError, TypeError) as exc:
        raise RuntimeError(
            "CONSOLE_TOTP_KEY must be a Fernet key: 32 random bytes in URL-safe base64 "
            "(see README: Configuration)"
        ) from exc


def seal(cipher: Fernet, totp_secret: str) -> str:
    """The stored form of a TOTP secret."""
    return cipher.encrypt(totp_secret.encode()).decode()


def unseal(cipher: Fernet, stored: str) -> str:
    """The TOTP secret a stored form holds; ValueError if another key sealed it."""
    try:
        return cipher.decrypt(stored.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("this TOTP secret was sealed with another key") from exc
