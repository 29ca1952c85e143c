"""Account terminations awaiting purge, and the tamper-evident audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class AccountTermination(Base):
    """A terminated helpdesk account: its devices get no push, its data is purged later."""

    __tablename__ = "account_terminations"
    __table_args__ = (Index("ix_account_terminations_terminated_at", "terminated_at"),)

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    terminated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """One staff action. Holds no personal data; each row hashes the previous one."""

    __tablename__ = "audit_events"
    # Each filter ends in the id, so a filtered page, newest first, reads its index
    # backwards and stops after one page, never walking the trail.
    __table_args__ = (
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_actor_action_id", "actor", "action", "id"),
        Index("ix_audit_events_action_id", "action", "id"),
        Index("ix_audit_events_target_id", "target", "id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AccountTombstone(Base):
    """A purged terminated account, named only by a keyed hash so it stays refused."""

    __tablename__ = "account_tombstones"

    account_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    purged_at: Mapped[datetime] = mapped_column(default=utcnow)
