"""Business rules. Services take a session and plain data; they never read `request`."""

from typing import Any, TypeAlias

from sqlalchemy.orm import Session, scoped_session

# A plain Session or Flask-SQLAlchemy's request-scoped proxy of one.
Db: TypeAlias = Session | scoped_session[Any]
