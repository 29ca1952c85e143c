"""When the Celery sweep's recovery of a campaign was queued (at most one outstanding).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 01:40:00.000000

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "campaigns",
        sa.Column("recovery_queued_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade():
    # In place: batch mode would recreate campaigns on SQLite, and dropping the
    # old table cascades into every delivery.
    op.drop_column("campaigns", "recovery_queued_at")
