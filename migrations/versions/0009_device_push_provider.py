"""Which push service a device's token belongs to: fcm, apns or apns_sandbox.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-04 16:00:00.000000

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    # Every token stored so far is an FCM registration token.
    op.add_column(
        "devices",
        sa.Column("push_provider", sa.String(length=16), server_default="fcm", nullable=False),
    )


def downgrade():
    # In place: batch mode would recreate devices on SQLite, and dropping the old
    # table cascades into every consent record.
    op.drop_column("devices", "push_provider")
