"""``mailer db upgrade|downgrade|current``: the schema, through Alembic migrations only."""

from __future__ import annotations

import click

from mailer import db
from mailer.cli.base import console, main, pass_settings


@main.group("db")
def db_group() -> None:
    """Create or migrate the database schema."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@pass_settings
def upgrade(settings, revision: str) -> None:
    """Create or migrate the schema to REVISION (default: the newest)."""
    db.upgrade(settings, revision)
    console.print(f"database at revision {db.current_revision(settings)} ({_safe(settings.database_url)})")


@db_group.command("downgrade")
@click.argument("revision")
@pass_settings
def downgrade(settings, revision: str) -> None:
    """Migrate the schema down to REVISION ("base" removes every table)."""
    db.downgrade(settings, revision)
    console.print(f"database at revision {db.current_revision(settings)}")


@db_group.command("current")
@pass_settings
def current(settings) -> None:
    """Print the schema revision."""
    console.print(db.current_revision(settings) or "empty (run: mailer db upgrade)")


def _safe(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url
