"""API keys: creation, listing, revocation and authentication."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import sqlalchemy as sa

from mobile_api.services import Db, audit
from mobile_api.services.caller import CLI, Caller
from mobile_api.services.secrets import API_KEY_PREFIX, hash_secret, matches, new_secret
from models import ApiKey, Role, new_id, utcnow


def create(session: Db, role: str, name: str, caller: Caller = CLI) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never retrievable again.

    The key and its `key.created` audit event are committed together: no usable key
    without its trace.
    """
    role = Role(role).value
    secret = new_secret(API_KEY_PREFIX)
    key = ApiKey(id=new_id(), role=role, name=name, secret_hash=hash_secret(secret))
    session.add(key)
    audit.record(session, caller, action="key.created", target=key.id, details={"role": role})
    session.commit()
    return key, secret


def list_keys(session: Db) -> Sequence[ApiKey]:
    """Every key, oldest first."""
    return session.scalars(sa.select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all()


def revoke(session: Db, key_id: str, caller: Caller = CLI) -> ApiKey | None:
    """Revoke a key at once; None when no such key exists.

    The revocation and its `key.revoked` audit event are committed together; revoking
    a revoked key changes nothing and records nothing.
    """
    key = session.get(ApiKey, key_id)
    if key is None:
        return None
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        audit.record(session, caller, action="key.revoked", target=key.id)
        session.commit()
    return key


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """What a request needs to know about the API key that authenticated it."""

    id: str
    role: str


_keys = cast(sa.Table, ApiKey.__table__)
# Only active keys match, so a revocation takes effect with the next request.
_ACTIVE_KEY = sa.select(_keys.c.id, _keys.c.role, _keys.c.secret_hash).where(
    _keys.c.secret_hash == sa.bindparam("secret_hash"), _keys.c.revoked_at.is_(None)
)


def authenticate(session: Db, secret: str) -> KeyIdentity | None:
    """The active key whose secret this is, or None."""
    if not secret.startswith(API_KEY_PREFIX):
        return None
    # Plain columns, not an ApiKey object: every staff and app request runs this.
    row = session.execute(_ACTIVE_KEY, {"secret_hash": hash_secret(secret)}).first()
    if row is None or not matches(secret, row.secret_hash):
        return None
    return KeyIdentity(row.id, row.role)
