"""Hand-off marks on deliveries, and a per-campaign circuit breaker.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 16:00:00.000000

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "campaign_deliveries",
        sa.Column("handed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "campaigns",
        sa.Column("breaker_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "campaigns",
        sa.Column("breaker_trips", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade():
    # In place: batch mode would recreate the tables on SQLite, and dropping
    # campaigns cascades into every delivery.
    op.drop_column("campaigns", "breaker_trips")
    op.drop_column("campaigns", "breaker_until")
    op.drop_column("campaign_deliveries", "handed_at")
