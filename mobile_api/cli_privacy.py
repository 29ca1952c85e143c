"""Command-line tools: `flask --app wsgi privacy purge` and `flask --app wsgi audit verify`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
from flask.cli import AppGroup

from mobile_api.extensions import db
from mobile_api.services import audit, privacy
from mobile_api.services.caller import CLI
from models import utcnow

privacy_cli = AppGroup("privacy", help="Privacy operations.")
audit_cli = AppGroup("audit", help="The tamper-evident audit trail.")

# How far ahead of this host's clock --now may be: the skew between two clocks, no more. A run
# as of a later time would erase accounts before their PURGE_AFTER_DAYS are up.
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@privacy_cli.command("purge")
@click.option(
    "--now",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    default=None,
    help="Run as of this UTC time, not later than now (default: the real clock).",
)
def purge_command(now: datetime | None) -> None:
    """Erase accounts whose purge is due and rows past their retention."""
    as_of = _utc(now)
    if as_of is not None and as_of > utcnow() + CLOCK_SKEW_TOLERANCE:
        raise click.BadParameter(
            f"{as_of:%Y-%m-%dT%H:%M:%SZ} is in the future; a purge may run as of now or an "
            "earlier time, never ahead of the clock (that would erase accounts early)",
            param_hint="--now",
        )
    result = privacy.run_purge(as_of, caller=CLI)
    click.echo(f"erased {result.accounts} accounts, {result.devices} devices")
    for table, rows in result.retention.items():
        click.echo(f"retention: deleted {rows} rows from {table}")


@audit_cli.command("verify")
def verify_command() -> None:
    """Check the hash chain; report the first broken link (exit status 1)."""
    broken, checked = audit.verify(db.session)
    if broken is not None:
        raise click.ClickException(
            f"audit trail broken at event {broken.event_id}: {broken.reason} "
            f"({checked} events before it verified)"
        )
    click.echo(f"audit trail intact: {checked} events verified")
