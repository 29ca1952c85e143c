"""Each campaign's delivery counts by status and reason, kept as the dispatcher decides rows,
so a campaign still sending is counted without a GROUP BY over its deliveries.

Backfilled from the delivery rows that exist (pending and sending are one count,
`pending` with no reason; no reason is stored as '').

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 19:30:00.000000

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

deliveries = sa.table(
    "campaign_deliveries",
    sa.column("campaign_id", sa.String),
    sa.column("status", sa.String),
    sa.column("reason", sa.String),
)


def upgrade():
    counts = op.create_table(
        "campaign_delivery_counts",
        sa.Column("campaign_id", sa.String(length=26), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column(
            "n", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_delivery_counts_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "campaign_id", "status", "reason", name=op.f("pk_campaign_delivery_counts")
        ),
    )
    undecided = deliveries.c.status.in_(("pending", "sending"))
    keys = sa.select(
        deliveries.c.campaign_id,
        sa.case((undecided, "pending"), else_=deliveries.c.status).label("status"),
        sa.case((undecided, ""), else_=sa.func.coalesce(deliveries.c.reason, "")).label(
            "reason"
        ),
    ).subquery()
    op.execute(
        counts.insert().from_select(
            ["campaign_id", "status", "reason", "n"],
            sa.select(keys.c.campaign_id, keys.c.status, keys.c.reason, sa.func.count()).group_by(
                keys.c.campaign_id, keys.c.status, keys.c.reason
            ),
        )
    )


def downgrade():
    op.drop_table("campaign_delivery_counts")
