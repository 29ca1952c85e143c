"""Staff people: accounts, one-time links, sign-in with password and TOTP, sessions.

Passwords are stored as argon2id hashes; one-time link and session secrets only as
SHA-256 (they are 256-bit random); TOTP secrets sealed (services/totp_secrets.py).
Every change to an account is audited.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet
from flask import current_app

from mobile_api.errors import (
    EnrolmentRefused,
    NotFound,
    SignInRefused,
    StaffExists,
    StaffLinkInvalid,
)
from mobile_api.services import Db, audit, totp_secrets
from mobile_api.services.caller import CLI, Caller
from mobile_api.services.secrets import hash_secret, new_secret
from models import StaffLink, StaffMember, StaffRole, StaffSession, utcnow

LINK_PREFIX = "sl_"
SESSION_PREFIX = "ss_"
PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 256
TOTP_ISSUER = "mobile_api console"
TOTP_STEP_SECONDS = 30
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,63}$")

_hasher = PasswordHasher()
# Verified against when the email is unknown, so a wrong email costs as long as a
# wrong password and the timing does not say who has an account.
_DUMMY_HASH = _hasher.hash("not anybody's password")


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What the one-time link's page shows: who, and the TOTP secret to enrol."""

    email: str
    role: str
    totp_secret: str
    otpauth_uri: str


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A staff member's request: who, with which role, in which session."""

    staff_id: str
    email: str
    role: str
    session_id: str
    csrf_token: str

    @property
    def actor(self) -> str:
        """How the audit trail names this person."""
        return f"staff:{self.email}"

    def caller(self, request_id: str | None) -> Caller:
        """The services' view of this person acting in a request."""
        return Caller(actor=self.actor, role=self.role, request_id=request_id)


def normalise_email(email: str) -> str:
    """Lower-cased and stripped; refused unless it looks like an address."""
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise EnrolmentRefused("Give an email address such as name@example.com.")
    return email


def _member(session: Db, email: str) -> StaffMember:
    member = session.scalars(
        sa.select(StaffMember).where(StaffMember.email == normalise_email(email))
    ).first()
    if member is None:
        raise NotFound(f"No staff member {email}.")
    return member


log = logging.getLogger(__name__)


def _cipher() -> Fernet:
    return totp_secrets.fernet(current_app.config)


def _totp_secret(sealed: str, member: StaffMember) -> str | None:
    """The TOTP secret `sealed` holds; None, with a warning for the operator, when another
    key sealed it (CONSOLE_TOTP_KEY, or SECRET_KEY while it is unset, has changed)."""
    try:
        return totp_secrets.unseal(_cipher(), sealed)
    except ValueError:
        log.warning(
            "the authenticator secret of staff member %s was sealed with another key "
            "(CONSOLE_TOTP_KEY or SECRET_KEY changed): reset them with `flask staff reset`",
            member.id,
        )
        return None


def _new_link(session: Db, member: StaffMember, ttl: timedelta) -> str:
    """Replace any unused link of the member by a new one; returns its secret."""
    session.execute(
        sa.delete(StaffLink)
        .where(StaffLink.staff_id == member.id, StaffLink.used_at.is_(None))
        .execution_options(synchronize_session=False)
    )
    secret = new_secret(LINK_PREFIX)
    session.add(
        StaffLink(
            staff_id=member.id,
            token_hash=hash_secret(secret),
            totp_secret=totp_secrets.seal(_cipher(), pyotp.random_base32()),
            expires_at=utcnow() + ttl,
        )
    )
    return secret


def _end_sessions(session: Db, staff_id: str) -> None:
    session.execute(
        sa.delete(StaffSession)
        .where(StaffSession.staff_id == staff_id)
        .execution_options(synchronize_session=False)
    )


def create(
    session: Db, email: str, role: str, *, link_ttl: timedelta, caller: Caller = CLI
) -> tuple[StaffMember, str]:
    """Create a staff member; returns it with the secret of its one-time link."""
    role = StaffRole(role).value
    email = normalise_email(email)
    if session.scalars(sa.select(StaffMember.id).where(StaffMember.email == email)).first():
        raise StaffExists()
    member = StaffMember(email=email, role=role)
    session.add(member)
    session.flush()
    secret = _new_link(session, member, link_ttl)
    audit.record(session, caller, action="staff.created", target=member.id, details={"role": role})
    session.commit()
    return member, secret


def list_members(session: Db) -> Sequence[StaffMember]:
    """Every staff member, by email."""
    return session.scalars(sa.select(StaffMember).order_by(StaffMember.email)).all()


def set_role(session: Db, email: str, role: str, caller: Caller = CLI) -> StaffMember:
    """Change a member's role; it applies to their open sessions at their next request."""
    role = StaffRole(role).value
    member = _member(session, email)
    if member.role != role:
        audit.record(
            session,
            caller,
            action="staff.role_changed",
            target=member.id,
            details={"from": member.role, "to": role},
        )
        member.role = role
    session.commit()
    return member


def disable(session: Db, email: str, caller: Caller = CLI) -> StaffMember:
    """Stop a member signing in; their open sessions end at once."""
    member = _member(session, email)
    if member.disabled_at is None:
        member.disabled_at = utcnow()
        audit.record(session, caller, action="staff.disabled", target=member.id)
    _end_sessions(session, member.id)
    session.commit()
    return member


def enable(session: Db, email: str, caller: Caller = CLI) -> StaffMember:
    """Let a disabled member sign in again."""
    member = _member(session, email)
    if member.disabled_at is not None:
        member.disabled_at = None
        audit.record(session, caller, action="staff.enabled", target=member.id)
    session.commit()
    return member


def reset(session: Db, email: str, *, link_ttl: timedelta, caller: Caller = CLI) -> str:
    """Forget a member's password and authenticator, end their sessions; a new link's secret."""
    member = _member(session, email)
    member.password_hash = None
    member.totp_secret = None
    member.totp_last_step = None
    _end_sessions(session, member.id)
    secret = _new_link(session, member, link_ttl)
    audit.record(session, caller, action="staff.reset", target=member.id)
    session.commit()
    return secret


def _usable_link(session: Db, secret: str) -> tuple[StaffLink, StaffMember]:
    row = session.execute(
        sa.select(StaffLink, StaffMember)
        .join(StaffMember, StaffMember.id == StaffLink.staff_id)
        .where(StaffLink.token_hash == hash_secret(secret))
    ).first()
    if row is None:
        raise StaffLinkInvalid()
    link, member = row
    if link.used_at is not None or link.expires_at <= utcnow() or member.disabled_at is not None:
        raise StaffLinkInvalid()
    return link, member


def _otpauth_uri(email: str, totp_secret: str) -> str:
    return pyotp.TOTP(totp_secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


def enrolment(session: Db, secret: str) -> Enrolment:
    """What a valid one-time link enrols (StaffLinkInvalid when used, expired or unknown)."""
    link, member = _usable_link(session, secret)
    session.rollback()
    totp_secret = _totp_secret(link.totp_secret, member)
    if totp_secret is None:
        raise StaffLinkInvalid()
    return Enrolment(
        member.email, member.role, totp_secret, _otpauth_uri(member.email, totp_secret)
    )


def _matching_step(totp_secret: str, code: str, after: int | None, now: datetime) -> int | None:
    """The time step (current, or one either side for clock drift) whose code this is."""
    code = code.strip().replace(" ", "")
    if not code.isdigit() or len(code) != 6:
        return None
    totp = pyotp.TOTP(totp_secret)
    current = int(now.timestamp()) // TOTP_STEP_SECONDS
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.at(step * TOTP_STEP_SECONDS), code) and (
            after is None or step > after
        ):
            return step
    return None


def complete_enrolment(session: Db, secret: str, password: str, confirm: str, code: str) -> str:
    """Set the password and TOTP from a one-time link, which is then used up; the email."""
    link, member = _usable_link(session, secret)
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise EnrolmentRefused(
            f"Choose a password of {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters."
        )
    if password != confirm:
        raise EnrolmentRefused("The two passwords differ.")
    totp_secret = _totp_secret(link.totp_secret, member)
    if totp_secret is None:
        session.rollback()
        raise StaffLinkInvalid()
    step = _matching_step(totp_secret, code, None, utcnow())
    if step is None:
        raise EnrolmentRefused("That code is not the authenticator's current one; try again.")
    # Compare-and-set: of two submissions of one link, exactly one wins.
    used = session.execute(
        sa.update(StaffLink)
        .where(StaffLink.id == link.id, StaffLink.used_at.is_(None))
        .values(used_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise StaffLinkInvalid()
    member.password_hash = _hasher.hash(password)
    member.totp_secret = link.totp_secret  # sealed as it is
    member.totp_last_step = step
    audit.record(session, _self(member), action="staff.enrolled", target=member.id)
    session.commit()
    return member.email


def _self(member: StaffMember, request_id: str | None = None) -> Caller:
    """A member acting on their own sign-in."""
    return Caller(actor=member.actor, role=member.role, request_id=request_id)


def _verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def sign_in(
    session: Db, email: str, password: str, code: str, *, request_id: str | None = None
) -> tuple[str, SignedIn]:
    """Check password and TOTP; a new session: its cookie secret and who signed in.

    Every refusal says the same (SignInRefused), whichever part was wrong.
    """
    member = session.scalars(
        sa.select(StaffMember).where(StaffMember.email == email.strip().lower())
    ).first()
    password_ok = _verify_password(member.password_hash if member else None, password)
    if member is None or not password_ok or member.disabled_at is not None:
        session.rollback()
        raise SignInRefused()
    assert member.totp_secret is not None  # a password is only ever set with it
    now = utcnow()
    totp_secret = _totp_secret(member.totp_secret, member)
    step = (
        None
        if totp_secret is None
        else _matching_step(totp_secret, code, member.totp_last_step, now)
    )
    if step is None:
        session.rollback()
        raise SignInRefused()
    member.totp_last_step = step
    member.last_sign_in_at = now
    if _hasher.check_needs_rehash(member.password_hash or ""):
        member.password_hash = _hasher.hash(password)
    secret = new_secret(SESSION_PREFIX)
    record = StaffSession(
        staff_id=member.id,
        token_hash=hash_secret(secret),
        csrf_token=new_secret(""),
        created_at=now,
        last_seen_at=now,
    )
    session.add(record)
    session.flush()
    audit.record(session, _self(member, request_id), action="staff.signed_in", target=member.id)
    signed_in = SignedIn(member.id, member.email, member.role, record.id, record.csrf_token)
    session.commit()
    return secret, signed_in


_SESSION = (
    sa.select(StaffSession.id, StaffSession.csrf_token, StaffSession.created_at)
    .add_columns(StaffSession.last_seen_at, StaffMember.id.label("staff_id"))
    .add_columns(StaffMember.email, StaffMember.role)
    .join(StaffMember, StaffMember.id == StaffSession.staff_id)
    .where(
        StaffSession.token_hash == sa.bindparam("token_hash"),
        StaffMember.disabled_at.is_(None),
    )
)


def session_for(
    session: Db, secret: str, *, idle: timedelta, lifetime: timedelta
) -> SignedIn | None:
    """Who this session cookie belongs to, if it is live; notes the activity.

    None when unknown, ended, idle longer than `idle`, older than `lifetime`, or its
    member is disabled.
    """
    if not secret.startswith(SESSION_PREFIX):
        return None
    row = session.execute(_SESSION, {"token_hash": hash_secret(secret)}).first()
    now = utcnow()
    if row is None or row.last_seen_at <= now - idle or row.created_at <= now - lifetime:
        session.rollback()
        return None
    # Activity is noted at most once a minute: a page is one write, not one per request.
    if row.last_seen_at <= now - timedelta(minutes=1):
        session.execute(
            sa.update(StaffSession).where(StaffSession.id == row.id).values(last_seen_at=now)
        )
        session.commit()
    return SignedIn(row.staff_id, row.email, row.role, row.id, row.csrf_token)


def sign_out(session: Db, session_id: str) -> None:
    """End one session."""
    session.execute(sa.delete(StaffSession).where(StaffSession.id == session_id))
    session.commit()
