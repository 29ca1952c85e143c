"""`flask --app wsgi staff …`: create, list, re-role, disable, enable and reset staff people."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup

from mobile_api.errors import DomainError
from mobile_api.extensions import db
from mobile_api.http_errors import domain_error_message
from mobile_api.services import staff as staff_service
from models import StaffRole

staff_cli = AppGroup("staff", help="Console staff accounts: create, list, set-role, disable, …")

_ROLE = click.Choice([r.value for r in StaffRole])


def _link_ttl() -> timedelta:
    return timedelta(hours=int(current_app.config["CONSOLE_LINK_TTL_HOURS"]))


def sign_in_link(secret: str) -> str:
    """The one-time link a person opens to set a password and enrol TOTP."""
    return f"{current_app.config['CONSOLE_BASE_URL'].rstrip('/')}/console/enrol/{secret}"


def _echo_link(secret: str) -> None:
    hours = current_app.config["CONSOLE_LINK_TTL_HOURS"]
    click.echo(f"One-time sign-in link (valid {hours} h, works once); send it to them privately:")
    click.echo(sign_in_link(secret))


def _refused(error: DomainError) -> click.ClickException:
    return click.ClickException(domain_error_message(error))


@staff_cli.command("create")
@click.option("--email", required=True)
@click.option("--role", required=True, type=_ROLE)
def create(email: str, role: str) -> None:
    """Create a staff member; prints their one-time sign-in link."""
    try:
        member, secret = staff_service.create(db.session, email, role, link_ttl=_link_ttl())
    except DomainError as error:
        raise _refused(error) from error
    click.echo(f"Created {member.email} (role {member.role}).")
    _echo_link(secret)


@staff_cli.command("list")
def list_members() -> None:
    """One staff member a line: email, role, enrolled or not, active or disabled."""
    for member in staff_service.list_members(db.session):
        enrolled = "enrolled" if member.password_hash else "not enrolled"
        state = f"disabled {member.disabled_at.isoformat()}" if member.disabled_at else "active"
        click.echo(f"{member.email}\t{member.role}\t{enrolled}\t{state}")


@staff_cli.command("set-role")
@click.argument("email")
@click.argument("role", type=_ROLE)
def set_role(email: str, role: str) -> None:
    """Change a staff member's role."""
    try:
        member = staff_service.set_role(db.session, email, role)
    except DomainError as error:
        raise _refused(error) from error
    click.echo(f"{member.email} now has role {member.role}.")


@staff_cli.command("disable")
@click.argument("email")
def disable(email: str) -> None:
    """Stop a staff member signing in; their open sessions end at once."""
    try:
        member = staff_service.disable(db.session, email)
    except DomainError as error:
        raise _refused(error) from error
    click.echo(f"Disabled {member.email}; their sessions have ended.")


@staff_cli.command("enable")
@click.argument("email")
def enable(email: str) -> None:
    """Let a disabled staff member sign in again."""
    try:
        member = staff_service.enable(db.session, email)
    except DomainError as error:
        raise _refused(error) from error
    click.echo(f"Enabled {member.email}.")


@staff_cli.command("reset")
@click.argument("email")
def reset(email: str) -> None:
    """Forget password and authenticator; prints a new one-time link to enrol both again."""
    try:
        secret = staff_service.reset(db.session, email, link_ttl=_link_ttl())
    except DomainError as error:
        raise _refused(error) from error
    click.echo(f"Reset {email.strip().lower()}; their sessions have ended.")
    _echo_link(secret)
