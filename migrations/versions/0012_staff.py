"""Staff people for the console: accounts, one-time links, server-side sessions;
audit indexes that end in the id, for the console's filtered, newest-first pages.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 16:00:00.000000

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "staff_members",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("totp_secret", sa.String(length=64), nullable=True),
        sa.Column("totp_last_step", sa.Integer(), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_members")),
        sa.UniqueConstraint("email", name=op.f("uq_staff_members_email")),
    )
    op.create_table(
        "staff_links",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("staff_id", sa.String(length=26), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("totp_secret", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff_members.id"],
            name=op.f("fk_staff_links_staff_id_staff_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_staff_links_token_hash")),
    )
    op.create_index("ix_staff_links_staff_id", "staff_links", ["staff_id"])
    op.create_table(
        "staff_sessions",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("staff_id", sa.String(length=26), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff_members.id"],
            name=op.f("fk_staff_sessions_staff_id_staff_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_staff_sessions_token_hash")),
    )
    op.create_index("ix_staff_sessions_staff_id", "staff_sessions", ["staff_id"])
    # The console filters the audit trail newest first by actor, action or target.
    for column in ("actor", "action", "target"):
        op.drop_index(f"ix_audit_events_{column}", table_name="audit_events")
        op.create_index(f"ix_audit_events_{column}_id", "audit_events", [column, "id"])
    op.create_index(
        "ix_audit_events_actor_action_id", "audit_events", ["actor", "action", "id"]
    )


def downgrade():
    op.drop_index("ix_audit_events_actor_action_id", table_name="audit_events")
    for column in ("actor", "action", "target"):
        op.drop_index(f"ix_audit_events_{column}_id", table_name="audit_events")
        op.create_index(f"ix_audit_events_{column}", "audit_events", [column])
    op.drop_index("ix_staff_sessions_staff_id", table_name="staff_sessions")
    op.drop_table("staff_sessions")
    op.drop_index("ix_staff_links_staff_id", table_name="staff_links")
    op.drop_table("staff_links")
    op.drop_table("staff_members")
