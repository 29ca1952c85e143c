"""A campaign's deliveries listed in id order from an index of their own.

Without it, the first page of a campaign still sending walked the primary key past
every other campaign's rows (p95 617 ms with 1,000,000 of them; bench/console_render).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 20:50:00.000000

"""

from alembic import op


# revision identifiers, used by Alembic.
revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        "ix_campaign_deliveries_campaign_id_id",
        "campaign_deliveries",
        ["campaign_id", "id"],
    )


def downgrade():
    op.drop_index("ix_campaign_deliveries_campaign_id_id", table_name="campaign_deliveries")
