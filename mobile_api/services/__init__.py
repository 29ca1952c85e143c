"""Business rules. Services take a session and plain data; they never read `request`."""

from typing import Any, TypeAlias

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, scoped_session

# A plain Session or Flask-SQLAlchemy's request-scoped proxy of one.
Db: TypeAlias = Session | scoped_session[Any]


def commit_keeping_state(session: Db) -> None:
    """Commit without expiring loaded objects, for a response built from them right after.

    The default (expire on commit) would re-SELECT every object the response touches:
    a fifth of a check-in's cost. Only for request-scoped work that ends with this commit.
    """
    target: Session = session() if isinstance(session, scoped_session) else session
    target.expire_on_commit = False
    try:
        target.commit()
    finally:
        target.expire_on_commit = True


def is_postgresql(session: Db) -> bool:
    """Whether the session talks to PostgreSQL (else SQLite, the embedded default)."""
    return bool(session.get_bind().dialect.name == "postgresql")


def dialect_insert(session: Db) -> Any:
    """The INSERT construct with ON CONFLICT support for the session's database."""
    return postgresql.insert if is_postgresql(session) else sqlite.insert
