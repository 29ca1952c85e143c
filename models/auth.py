"""API keys for staff tools and the app build."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, new_id, utcnow


class Role(StrEnum):
    """What an API key may do; `admin` may do everything."""

    APP = "app"
    MARKETING = "marketing"
    SUPPORT = "support"
    PRIVACY = "privacy"
    ADMIN = "admin"
    # The helpdesk's backend: transactional notifications to its own users.
    NOTIFY = "notify"


class ApiKey(Base):
    """A role-bearing secret; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]  # set: the key no longer authenticates
