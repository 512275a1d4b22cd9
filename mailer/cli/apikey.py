"""``mailer apikey create NAME`` (prints the key once), ``list``, ``revoke NAME``."""

from __future__ import annotations

import click
from rich.table import Table

from mailer import db
from mailer.cli.base import cli_actor, console, err_console, main, pass_settings
from mailer.web import apikeys


@main.group("apikey")
def apikey_group() -> None:
    """Bearer keys for the HTTP API, each with scopes: notices, events, consents, customers, gdpr."""


@apikey_group.command("create")
@click.argument("name")
@click.option("--scope", "scope", default=",".join(apikeys.DEFAULT_SCOPES), show_default=True,
              help=f"Comma-separated scopes: {', '.join(apikeys.SCOPES)}.")
@pass_settings
def create_cmd(settings, name: str, scope: str) -> None:
    """Create a key named NAME and print it; it is stored hashed and cannot be shown again."""

    with db.session_scope(settings) as s:
        created = apikeys.create_audited(s, name, scope, actor=cli_actor())
    click.echo(created.key)
    err_console.print(f"API key {name!r} created with scopes {','.join(created.scopes)}. "
                      "Store it now: only its hash is kept. "
                      "Use it as 'Authorization: Bearer <key>'.", highlight=False)


@apikey_group.command("list")
@pass_settings
def list_cmd(settings) -> None:
    """Every key: name, prefix, scopes, created, last used, revoked."""

    table = Table("name", "prefix", "scopes", "created", "last used", "revoked")
    with db.session_scope(settings) as s:
        for k in apikeys.list_keys(s):
            table.add_row(k.name, f"mk_{k.prefix}_…", ",".join(apikeys.scopes_of(k)), f"{k.created_at:%Y-%m-%d %H:%M}",
                          f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never",
                          f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    console.print(table)


@apikey_group.command("revoke")
@click.argument("name")
@pass_settings
def revoke_cmd(settings, name: str) -> None:
    """Revoke the key named NAME at once."""

    with db.session_scope(settings) as s:
        apikeys.revoke(s, name)
    console.print(f"API key {name!r} revoked", highlight=False)
