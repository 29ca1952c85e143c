"""The circuit breaker of each push provider (FCM, an APNs host), shared by every lane."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class PushBreaker(Base):
    """While a provider keeps failing, its deliveries wait until `open_until`, then one probe.

    `trips` in a row decide the wait; 0 (or no row) is a closed breaker.
    """

    __tablename__ = "push_breakers"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    trips: Mapped[int] = mapped_column(default=0, server_default="0")
    open_until: Mapped[datetime | None]
