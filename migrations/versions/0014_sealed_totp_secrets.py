"""Staff TOTP secrets sealed at rest: columns widened for Fernet tokens, existing rows
encrypted (decrypted again on downgrade) with the key of services/totp_secrets.py.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 20:00:00.000000

"""

from alembic import op
import sqlalchemy as sa
from flask import current_app

from mobile_api.services import totp_secrets


# revision identifiers, used by Alembic.
revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_TABLES = ("staff_members", "staff_links")


def _rewrite(change):
    """Apply `change` to every stored TOTP secret of both tables."""
    bind = op.get_bind()
    for name in _TABLES:
        table = sa.table(name, sa.column("id", sa.String), sa.column("totp_secret", sa.String))
        rows = bind.execute(
            sa.select(table.c.id, table.c.totp_secret).where(table.c.totp_secret.is_not(None))
        ).all()
        for row in rows:
            bind.execute(
                table.update()
                .where(table.c.id == row.id)
                .values(totp_secret=change(row.totp_secret))
            )


def _resize(length, was):
    bind = op.get_bind()
    # SQLite's batch mode recreates staff_members, and dropping the old table cascades
    # to the rows that point at it: keep them aside and put them back.
    children = {}
    if bind.dialect.name == "sqlite":
        for name in ("staff_links", "staff_sessions"):
            table = sa.Table(name, sa.MetaData(), autoload_with=bind)
            children[table] = [row._asdict() for row in bind.execute(sa.select(table))]
    for name in _TABLES:
        with op.batch_alter_table(name) as batch:
            batch.alter_column(
                "totp_secret",
                type_=sa.String(length=length),
                existing_type=sa.String(length=was),
                existing_nullable=name == "staff_members",
            )
    for table, rows in children.items():
        bind.execute(sa.delete(table))
        if rows:
            bind.execute(sa.insert(table), rows)


def upgrade():
    _resize(255, was=64)
    cipher = totp_secrets.fernet(current_app.config)
    _rewrite(lambda secret: totp_secrets.seal(cipher, secret))


def downgrade():
    cipher = totp_secrets.fernet(current_app.config)
    _rewrite(lambda stored: totp_secrets.unseal(cipher, stored))
    _resize(64, was=255)
