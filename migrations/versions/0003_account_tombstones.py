"""Keyed-hash tombstones of purged terminated accounts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 22:53:28.616068

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "account_tombstones",
        sa.Column("account_hash", sa.String(length=64), nullable=False),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_hash", name=op.f("pk_account_tombstones")),
    )


def downgrade():
    op.drop_table("account_tombstones")
