"""Telemetry events and the device version history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 22:54:27.641258

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "device_version_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("device_id", sa.String(length=26), nullable=False),
        sa.Column("field", sa.String(length=16), nullable=False),
        sa.Column("old_value", sa.String(length=32), nullable=True),
        sa.Column("new_value", sa.String(length=32), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_version_changes_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_version_changes")),
    )
    with op.batch_alter_table("device_version_changes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_device_version_changes_changed_at", ["changed_at"], unique=False
        )
        batch_op.create_index(
            "ix_device_version_changes_device_id_id", ["device_id", "id"], unique=False
        )

    op.create_table(
        "telemetry_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("device_id", sa.String(length=26), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_telemetry_events_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_events")),
    )
    with op.batch_alter_table("telemetry_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_telemetry_events_received_at", ["received_at"], unique=False
        )
        batch_op.create_index(
            "uq_telemetry_events_device_id_event_id", ["device_id", "event_id"], unique=True
        )


def downgrade():
    with op.batch_alter_table("telemetry_events", schema=None) as batch_op:
        batch_op.drop_index("uq_telemetry_events_device_id_event_id")
        batch_op.drop_index("ix_telemetry_events_received_at")

    op.drop_table("telemetry_events")
    with op.batch_alter_table("device_version_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_device_version_changes_device_id_id")
        batch_op.drop_index("ix_device_version_changes_changed_at")

    op.drop_table("device_version_changes")
