"""Bearer authentication and the role checks declared on each endpoint."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import g, request

from mobile_api.errors import Forbidden, Unauthenticated
from mobile_api.extensions import db
from mobile_api.http_errors import ErrorSchema
from mobile_api.routes import Blueprint
from mobile_api.services import keys
from mobile_api.services.caller import Caller
from mobile_api.services.secrets import DEVICE_TOKEN_PREFIX, hash_secret, matches
from models import Device, Role

F = TypeVar("F", bound=Callable[..., Any])

DEVICE = "device"  # pseudo-role: the caller presents a device token


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key or a device."""

    key: keys.KeyIdentity | None = None
    device: Device | None = None

    @property
    def actor(self) -> str:
        """Identifier for audit records: `key:<id>` or `device:<id>`."""
        if self.key is not None:
            return f"key:{self.key.id}"
        assert self.device is not None
        return f"device:{self.device.id}"

    @property
    def role(self) -> str:
        """The key's role, or the pseudo-role `device`."""
        return self.key.role if self.key is not None else DEVICE


def bearer_secret() -> str | None:
    """The secret from `Authorization: Bearer …`, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


_DEVICE_BY_TOKEN = sa.select(Device).where(Device.token_hash == sa.bindparam("token_hash"))


def device_for_token(token: str) -> Device | None:
    """The device this token belongs to, or None."""
    if not token.startswith(DEVICE_TOKEN_PREFIX):
        return None
    device = db.session.scalars(_DEVICE_BY_TOKEN, {"token_hash": hash_secret(token)}).first()
    if device is None or not matches(token, device.token_hash):
        return None
    return device


def _authenticate(roles: tuple[str, ...]) -> Principal:
    secret = bearer_secret()
    if secret is None:
        raise Unauthenticated()
    if DEVICE in roles and secret.startswith(DEVICE_TOKEN_PREFIX):
        device = device_for_token(secret)
        if device is None:
            raise Unauthenticated()
        return Principal(device=device)
    key = keys.authenticate(db.session, secret)
    if key is None:
        # A valid device token on a staff endpoint is refused as forbidden, not
        # unknown: the credential is real, the role is wrong.
        if secret.startswith(DEVICE_TOKEN_PREFIX) and device_for_token(secret) is not None:
            raise Forbidden()
        raise Unauthenticated()
    staff_roles = [role for role in roles if role != DEVICE]
    if not staff_roles or (key.role != Role.ADMIN and key.role not in staff_roles):
        raise Forbidden()
    return Principal(key=key)


def auth_required(blp: Blueprint, *roles: str) -> Callable[[F], F]:
    """Require a bearer credential of one of `roles`; admin keys always pass.

    The pseudo-role `device` admits device tokens.
    """
    if not roles:
        raise ValueError("name at least one role")
    described = ", ".join(roles) + ("" if DEVICE in roles else ", admin")
    doc: dict[str, Any] = {"security": [{"bearerAuth": []}], "x-roles": list(roles)}

    def decorator(func: F) -> F:
        func = blp.doc(**doc)(func)
        func = blp.alt_response(
            401,
            schema=ErrorSchema,
            description="Missing, unknown or revoked credential",
        )(func)
        func = blp.alt_response(
            403,
            schema=ErrorSchema,
            description=f"Credential without a permitted role ({described})",
        )(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.principal = _authenticate(roles)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def current_principal() -> Principal:
    """The authenticated caller of this request."""
    principal: Principal = g.principal
    return principal


def current_caller() -> Caller:
    """The services' view of this request's caller: actor, role and request id."""
    principal = current_principal()
    return Caller(actor=principal.actor, role=principal.role, request_id=g.get("request_id"))


def current_device() -> Device:
    """The device whose token authenticated this request."""
    device = current_principal().device
    if device is None:
        raise Forbidden()
    return device
