"""Campaigns and their per-device deliveries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 22:58:37.150047

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("audience", sa.JSON(), nullable=False),
        sa.Column("ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("collapse_key", sa.String(length=64), nullable=True),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enumerated_through", sa.String(length=26), nullable=True),
        sa.Column("enumeration_done", sa.Boolean(), nullable=False),
        sa.Column("targeted", sa.Integer(), nullable=False),
        sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.create_index("ix_campaigns_status", ["status"], unique=False)

    op.create_table(
        "campaign_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("campaign_id", sa.String(length=26), nullable=False),
        sa.Column("device_id", sa.String(length=26), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_deliveries_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_campaign_deliveries_device_id_devices"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_deliveries")),
        sa.UniqueConstraint(
            "campaign_id", "device_id", name=op.f("uq_campaign_deliveries_campaign_id")
        ),
    )
    with op.batch_alter_table("campaign_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_campaign_deliveries_campaign_id_status_id",
            ["campaign_id", "status", "id"],
            unique=False,
        )
        batch_op.create_index("ix_campaign_deliveries_claimed_at", ["claimed_at"], unique=False)
        batch_op.create_index("ix_campaign_deliveries_device_id", ["device_id"], unique=False)


def downgrade():
    with op.batch_alter_table("campaign_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_campaign_deliveries_device_id")
        batch_op.drop_index("ix_campaign_deliveries_claimed_at")
        batch_op.drop_index("ix_campaign_deliveries_campaign_id_status_id")

    op.drop_table("campaign_deliveries")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_index("ix_campaigns_status")

    op.drop_table("campaigns")
