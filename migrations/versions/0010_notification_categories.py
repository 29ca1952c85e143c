"""Notification categories, category preferences, quiet hours; campaign schedules and content.

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-04 16:00:00.000000

"""

from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0010"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    categories = op.create_table(
        "notification_categories",
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("default_enabled", sa.Boolean(), nullable=False),
        sa.Column("user_can_opt_out", sa.Boolean(), nullable=False),
        sa.Column("android_channel_id", sa.String(length=100), nullable=False),
        sa.Column("ios_interruption_level", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_notification_categories")),
    )
    now = datetime.now(UTC)
    # The built-ins are v1's two campaign categories; their kinds never change.
    op.bulk_insert(
        categories,
        [
            {
                "key": "promotions",
                "name": "Promotions",
                "kind": "promotional",
                "default_enabled": False,
                "user_can_opt_out": True,
                "android_channel_id": "promotions",
                "ios_interruption_level": "passive",
                "created_at": now,
                "updated_at": now,
            },
            {
                "key": "service",
                "name": "Service announcements",
                "kind": "service",
                "default_enabled": True,
                "user_can_opt_out": False,
                "android_channel_id": "service",
                "ios_interruption_level": "active",
                "created_at": now,
                "updated_at": now,
            },
        ],
    )
    op.create_table(
        "device_category_preferences",
        sa.Column("device_id", sa.String(length=26), nullable=False),
        sa.Column("category_key", sa.String(length=40), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["category_key"],
            ["notification_categories.key"],
            name=op.f("fk_device_category_preferences_category_key_notification_categories"),
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_category_preferences_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "device_id", "category_key", name=op.f("pk_device_category_preferences")
        ),
    )
    # In place, not batch: batch mode would recreate devices on SQLite, and dropping
    # the old table cascades into every child row.
    op.add_column("devices", sa.Column("quiet_hours_start", sa.String(length=5), nullable=True))
    op.add_column("devices", sa.Column("quiet_hours_end", sa.String(length=5), nullable=True))
    # `category:<key>` purposes are longer than v1's. consent_records has no children,
    # so SQLite's batch copy of it is safe.
    with op.batch_alter_table("consent_records") as batch_op:
        batch_op.alter_column(
            "purpose",
            existing_type=sa.String(length=32),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
    # Campaigns and deliveries: in place too (both have children or are huge).
    op.add_column(
        "campaigns",
        sa.Column(
            "category_key", sa.String(length=40), nullable=False, server_default="promotions"
        ),
    )
    op.execute("UPDATE campaigns SET category_key = 'service' WHERE category = 'service'")
    for column in _CAMPAIGN_COLUMNS:
        op.add_column("campaigns", column)
    op.add_column(
        "campaigns",
        sa.Column("fallback_timezone", sa.String(length=64), nullable=False, server_default="UTC"),
    )
    op.add_column("campaign_deliveries", sa.Column("due_at", sa.DateTime(timezone=True)))
    op.add_column("campaign_deliveries", sa.Column("handed_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_campaign_deliveries_device_id_handed_at",
        "campaign_deliveries",
        ["device_id", "handed_at"],
    )


_CAMPAIGN_COLUMNS = [
    sa.Column("content", sa.JSON(), nullable=True),
    sa.Column("default_locale", sa.String(length=35), nullable=True),
    sa.Column("image_url", sa.Text(), nullable=True),
    sa.Column("link", sa.Text(), nullable=True),
    sa.Column("sound", sa.String(length=64), nullable=True),
    sa.Column("badge", sa.Integer(), nullable=True),
    sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("local_time", sa.String(length=5), nullable=True),
]


def downgrade():
    op.drop_index("ix_campaign_deliveries_device_id_handed_at", "campaign_deliveries")
    op.drop_column("campaign_deliveries", "handed_at")
    op.drop_column("campaign_deliveries", "due_at")
    for name in ["fallback_timezone", *(c.name for c in _CAMPAIGN_COLUMNS), "category_key"]:
        op.drop_column("campaigns", name)
    with op.batch_alter_table("consent_records") as batch_op:
        batch_op.alter_column(
            "purpose",
            existing_type=sa.String(length=64),
            type_=sa.String(length=32),
            existing_nullable=False,
        )
    op.drop_column("devices", "quiet_hours_end")
    op.drop_column("devices", "quiet_hours_start")
    op.drop_table("device_category_preferences")
    op.drop_table("notification_categories")
