"""Migrations upgrade a database that holds data, and downgrade without losing it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import downgrade, upgrade

from mobile_api.extensions import db
from mobile_api.services import campaigns
from models import Campaign
from tests.conftest import make_app, scratch_postgres

NOW = datetime(2026, 1, 1, tzinfo=UTC)

# The schema as of 0004, written without the models (which are at head).
_campaigns = sa.table(
    "campaigns",
    *(
        sa.column(name)
        for name in ["id", "name", "category", "title", "body", "priority", "status"]
    ),
    *(sa.column(name) for name in ["created_by", "created_at", "enumeration_done", "targeted"]),
    sa.column("data", sa.JSON),
    sa.column("audience", sa.JSON),
)
_deliveries = sa.table(
    "campaign_deliveries",
    *(
        sa.column(name)
        for name in ["campaign_id", "status", "reason", "attempts", "next_attempt_at", "updated_at"]
    ),
)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    """An app on a new, empty database of each kind."""
    if request.param == "sqlite":
        yield make_app(f"sqlite:///{tmp_path / 'migrations.sqlite3'}")
        return
    with scratch_postgres() as url:
        app = make_app(url)
        yield app
        with app.app_context():
            db.engine.dispose()


def _campaign(campaign_id: str, status: str, *rows: tuple[str, str | None]) -> None:
    db.session.execute(
        sa.insert(_campaigns).values(
            id=campaign_id,
            name=campaign_id,
            category="promotional",
            title="t",
            body="b",
            data={},
            audience={},
            priority="normal",
            status=status,
            created_by="test",
            created_at=NOW,
            enumeration_done=True,
            targeted=len(rows),
        )
    )
    for row_status, reason in rows:
        db.session.execute(
            sa.insert(_deliveries).values(
                campaign_id=campaign_id,
                status=row_status,
                reason=reason,
                attempts=1,
                next_attempt_at=NOW,
                updated_at=NOW,
            )
        )


def _counts(campaign_id: str) -> dict[str, Any]:
    campaign = db.session.get(Campaign, campaign_id)
    assert campaign is not None
    return campaigns.counts(db.session, campaign)


def test_final_counts_are_backfilled_and_downgrade_keeps_the_deliveries(
    empty_app: Flask,
) -> None:
    with empty_app.app_context():
        upgrade(revision="0004")
        _campaign(
            "DONE",
            "completed",
            ("sent", None),
            ("sent", None),
            ("failed", "unregistered"),
            ("failed", "unavailable"),
            ("suppressed", "promotional_opt_out"),
            ("suppressed", "erased"),
        )
        _campaign("INFLIGHT", "cancelled", ("sending", None), ("suppressed", "cancelled"))
        _campaign("RUNNING", "sending", ("sent", None), ("pending", None))
        _campaign("PURGED", "completed")  # its rows are past retention already
        db.session.commit()

        upgrade(revision="0005")
        stored = {
            row.id: row
            for row in db.session.execute(
                sa.select(
                    Campaign.id,
                    Campaign.final_sent,
                    Campaign.final_failed,
                    Campaign.final_invalid_tokens_pruned,
                    Campaign.final_suppressed,
                )
            )
        }
        assert tuple(stored["DONE"])[1:] == (
            2,
            2,
            1,
            {"promotional_opt_out": 1, "erased": 1},
        )
        assert tuple(stored["PURGED"])[1:] == (0, 0, 0, {})
        # Not final yet: counted live until the dispatcher decides the rest.
        assert stored["INFLIGHT"].final_sent is None
        assert stored["RUNNING"].final_sent is None
        db.session.commit()
        upgrade()  # the models are at head
        assert _counts("DONE")["sent"] == 2
        # Not final: from the running counts, backfilled from the rows (0013).
        assert _counts("INFLIGHT")["pending"] == 1
        assert _counts("INFLIGHT")["suppressed"] == {"cancelled": 1}
        running = _counts("RUNNING")
        assert (running["sent"], running["pending"], running["failed"]) == (1, 1, 0)
        db.session.commit()

        downgrade(revision="0004")
        inspector = sa.inspect(db.engine)
        columns = {column["name"] for column in inspector.get_columns("campaigns")}
        assert not any(name.startswith("final_") for name in columns)
        assert "recovery_queued_at" not in columns
        assert db.session.scalar(sa.select(sa.func.count()).select_from(_deliveries)) == 10
        assert db.session.scalar(sa.select(sa.func.count()).select_from(_campaigns)) == 4
        db.session.commit()
        upgrade()
        db.session.remove()


_staff = sa.table(
    "staff_members",
    *(sa.column(name) for name in ["id", "email", "role", "totp_secret", "created_at"]),
)
_links = sa.table(
    "staff_links",
    *(sa.column(name) for name in ["id", "staff_id", "token_hash", "totp_secret"]),
    *(sa.column(name) for name in ["created_at", "expires_at"]),
)


def test_totp_secrets_are_sealed_by_0014_and_opened_again_by_its_downgrade(
    empty_app: Flask,
) -> None:
    from mobile_api.services import totp_secrets

    member_secret, link_secret = (
        "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
        "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU",
    )
    with empty_app.app_context():
        upgrade(revision="0012")
        db.session.execute(
            sa.insert(_staff).values(
                id="S1",
                email="a@example.com",
                role="admin",
                totp_secret=member_secret,
                created_at=NOW,
            )
        )
        db.session.execute(
            sa.insert(_links).values(
                id="L1",
                staff_id="S1",
                token_hash="h" * 64,
                totp_secret=link_secret,
                created_at=NOW,
                expires_at=NOW,
            )
        )
        db.session.commit()
        upgrade(revision="0014")
        # SQLite rebuilds staff_members; the link that points at it stays.
        assert db.session.scalar(sa.select(sa.func.count()).select_from(_links)) == 1
        stored = [
            db.session.scalar(sa.select(_staff.c.totp_secret)),
            db.session.scalar(sa.select(_links.c.totp_secret)),
        ]
        db.session.commit()
        # What a dump holds says nothing of the secrets; the configured key opens them.
        assert member_secret not in stored[0] and link_secret not in stored[1]
        cipher = totp_secrets.fernet(empty_app.config)
        assert [totp_secrets.unseal(cipher, value) for value in stored] == [
            member_secret,
            link_secret,
        ]
        downgrade(revision="0012")
        assert db.session.scalar(sa.select(_staff.c.totp_secret)) == member_secret
        assert db.session.scalar(sa.select(_links.c.totp_secret)) == link_secret
        db.session.commit()
        upgrade()
        db.session.remove()
