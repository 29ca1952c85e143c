"""A campaign's final counts, kept on the campaign so they outlive delivery retention.

Backfilled for every completed, cancelled or failed campaign with no delivery still
pending or being handed over, from the delivery rows that still exist (rows the
purge has already deleted cannot be counted any more). The others stay NULL and are
stored by the dispatcher once their last deliveries are decided.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 01:30:00.000000

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As of this revision (mobile_api.push.INVALID_TOKEN_ERRORS, models.FINAL_STATUSES).
INVALID_TOKEN_ERRORS = ("unregistered", "sender_id_mismatch")
FINAL_STATUSES = ("completed", "cancelled", "failed")
UNDECIDED = ("pending", "sending")

campaigns = sa.table(
    "campaigns",
    sa.column("id", sa.String),
    sa.column("status", sa.String),
    sa.column("final_sent", sa.Integer),
    sa.column("final_failed", sa.Integer),
    sa.column("final_invalid_tokens_pruned", sa.Integer),
    sa.column("final_suppressed", sa.JSON),
)
deliveries = sa.table(
    "campaign_deliveries",
    sa.column("campaign_id", sa.String),
    sa.column("status", sa.String),
    sa.column("reason", sa.String),
)


def upgrade():
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("final_sent", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("final_failed", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("final_invalid_tokens_pruned", sa.Integer(), nullable=True)
        )
        batch_op.add_column(sa.Column("final_suppressed", sa.JSON(), nullable=True))
    _backfill(op.get_bind())


def _backfill(connection):
    undecided = (
        sa.select(deliveries.c.campaign_id)
        .where(
            deliveries.c.campaign_id == campaigns.c.id,
            deliveries.c.status.in_(UNDECIDED),
        )
        .exists()
    )
    final = connection.scalars(
        sa.select(campaigns.c.id).where(campaigns.c.status.in_(FINAL_STATUSES), ~undecided)
    ).all()
    for campaign_id in final:
        sent = failed = pruned = 0
        suppressed = {}
        rows = connection.execute(
            sa.select(deliveries.c.status, deliveries.c.reason, sa.func.count())
            .where(deliveries.c.campaign_id == campaign_id)
            .group_by(deliveries.c.status, deliveries.c.reason)
        )
        for status, reason, n in rows:
            if status == "sent":
                sent += n
            elif status == "failed":
                failed += n
                if reason in INVALID_TOKEN_ERRORS:
                    pruned += n
            elif status == "suppressed":
                suppressed[reason] = suppressed.get(reason, 0) + n
        connection.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id)
            .values(
                final_sent=sent,
                final_failed=failed,
                final_invalid_tokens_pruned=pruned,
                final_suppressed=suppressed,
            )
        )


def downgrade():
    # Not batch mode: on SQLite it would copy and drop `campaigns`, and dropping it
    # cascades (foreign keys are on) into every campaign's deliveries. SQLite has
    # dropped plain columns in place since 3.35.
    for column in (
        "final_suppressed",
        "final_invalid_tokens_pruned",
        "final_failed",
        "final_sent",
    ):
        op.drop_column("campaigns", column)
