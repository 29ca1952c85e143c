"""Command-line tools: `flask --app wsgi keys …` (and the groups later issues add)."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from mobile_api.extensions import db
from mobile_api.services import keys as key_service
from models import Role

keys_cli = AppGroup("keys", help="Create, list and revoke API keys.")


@keys_cli.command("create")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--name", required=True, help="Who or what uses the key, e.g. 'android app 5.2'.")
def create_key(role: str, name: str) -> None:
    """Create a key; its secret is printed once, as the last line."""
    name = name.strip()
    if not name or len(name) > 128:
        raise click.BadParameter("must be 1–128 characters", param_hint="--name")
    key, secret = key_service.create(db.session, role, name)
    click.echo(f"Created key {key.id} (role {key.role}, name {key.name!r}).")
    click.echo("The secret below is shown only now; store it safely:")
    click.echo(secret)


@keys_cli.command("list")
def list_keys() -> None:
    """One key a line: id, role, name, created, revoked or active."""
    for key in key_service.list_keys(db.session):
        state = f"revoked {key.revoked_at.isoformat()}" if key.revoked_at else "active"
        click.echo(f"{key.id}\t{key.role}\t{key.name}\t{key.created_at.isoformat()}\t{state}")


@keys_cli.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke a key at once."""
    key = key_service.revoke(db.session, key_id)
    if key is None:
        raise click.ClickException(f"no key with id {key_id}")
    click.echo(f"Revoked key {key.id}.")


def init_app(app: Flask) -> None:
    """Register the command groups."""
    from mobile_api.cli_privacy import audit_cli, privacy_cli
    from mobile_api.worker import dispatch_cli

    app.cli.add_command(keys_cli)
    app.cli.add_command(privacy_cli)
    app.cli.add_command(audit_cli)
    app.cli.add_command(dispatch_cli)

    from mobile_api.cli_staff import staff_cli

    app.cli.add_command(staff_cli)
