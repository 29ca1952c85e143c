"""Staff people who sign in to the console: accounts, one-time links and sessions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, new_id, utcnow


class StaffRole(StrEnum):
    """What a staff member may do in the console; `admin` may do everything."""

    SUPPORT = "support"
    MARKETING = "marketing"
    PRIVACY = "privacy"
    ADMIN = "admin"


class StaffMember(Base):
    """A named person with one role; signs in with a password and a TOTP code."""

    __tablename__ = "staff_members"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # Both NULL until the person has used a one-time link (and again after a reset).
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # Sealed (Fernet) under CONSOLE_TOTP_KEY or a key derived from SECRET_KEY.
    totp_secret: Mapped[str | None] = mapped_column(String(255))
    # The last TOTP time step accepted: a code is good for one sign-in only.
    totp_last_step: Mapped[int | None]
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None]

    @property
    def actor(self) -> str:
        """How the audit trail names this person."""
        return f"staff:{self.email}"


class StaffLink(Base):
    """A one-time sign-in link: sets the password and enrols TOTP; hashed, expiring, single use."""

    __tablename__ = "staff_links"
    __table_args__ = (Index("ix_staff_links_staff_id", "staff_id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    staff_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("staff_members.id", ondelete="CASCADE")
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The TOTP secret offered on the link's page, kept until the person confirms a code;
    # sealed like StaffMember.totp_secret.
    totp_secret: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class StaffSession(Base):
    """A signed-in browser; the cookie holds a secret whose hash is the key here."""

    __tablename__ = "staff_sessions"
    __table_args__ = (Index("ix_staff_sessions_staff_id", "staff_id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    staff_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("staff_members.id", ondelete="CASCADE")
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
