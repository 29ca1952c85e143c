"""A circuit breaker per push provider instead of per campaign.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 20:00:00.000000

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "push_breakers",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("trips", sa.Integer(), server_default="0", nullable=False),
        sa.Column("open_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("provider", name=op.f("pk_push_breakers")),
    )
    # In place: batch mode would recreate campaigns on SQLite, and dropping it
    # cascades into every delivery.
    op.drop_column("campaigns", "breaker_trips")
    op.drop_column("campaigns", "breaker_until")


def downgrade():
    op.add_column(
        "campaigns",
        sa.Column("breaker_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "campaigns",
        sa.Column("breaker_trips", sa.Integer(), server_default="0", nullable=False),
    )
    op.drop_table("push_breakers")
