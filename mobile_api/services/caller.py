"""Who is acting: the one context every service that audits or checks a role receives."""

from __future__ import annotations

from dataclasses import dataclass

from models import Role


@dataclass(frozen=True, slots=True)
class Caller:
    """The actor named in the audit trail, the role it acts with, and the request carrying it.

    `actor` is `key:<id>`, `device:<id>`, `staff:<email>`, `cli` or `system`.
    """

    actor: str
    role: str
    request_id: str | None = None

    @property
    def is_admin(self) -> bool:
        """Admins may do everything, including service messages."""
        return self.role == Role.ADMIN


# The operator at the command line acts with every power; the periodic jobs too.
CLI = Caller(actor="cli", role=Role.ADMIN)
SYSTEM = Caller(actor="system", role=Role.ADMIN)
