"""``mailer users create EMAIL --role ROLE`` (prints a one-time set-password link), ``list``, ``disable EMAIL``."""

from __future__ import annotations

import click

from mailer import db
from mailer.cli.base import cli_actor, console, err_console, fold_table, main, pass_settings
from mailer.users import accounts


@main.group("users")
def users_group() -> None:
    """People who log in to the console (/console/login), each with a role: admin, marketer, compliance, viewer."""


@users_group.command("create")
@click.argument("email")
@click.option("--role", required=True, type=click.Choice(accounts.ROLES), help="What the user may do.")
@click.option("--locale", default="en", show_default=True, type=click.Choice(accounts.LOCALES),
              help="Language of the console for this user.")
@pass_settings
def create_cmd(settings, email: str, role: str, locale: str) -> None:
    """Create a console user and print a one-time link to set their password."""

    with db.session_scope(settings) as s:
        invite = accounts.create(s, settings, email, role, actor=cli_actor(), locale=locale)
    click.echo(settings.base_url.rstrip("/") + accounts.set_password_path(invite.token))
    err_console.print(f"Console user {invite.email!r} created with role {invite.role}. Send them the link above: "
                      f"it sets their password once and expires in {settings.console_invite_ttl_hours} hours.",
                      highlight=False)


@users_group.command("reset")
@click.argument("email")
@pass_settings
def reset_cmd(settings, email: str) -> None:
    """Print a new one-time set-password link for an enabled user (forgotten password)."""

    with db.session_scope(settings) as s:
        invite = accounts.reset_link(s, settings, email)
    click.echo(settings.base_url.rstrip("/") + accounts.set_password_path(invite.token))


@users_group.command("list")
@pass_settings
def list_cmd(settings) -> None:
    """Every console user: e-mail, role, two-factor, last login, state."""

    table = fold_table("email", "role", "2fa", "last login", "state")
    with db.session_scope(settings) as s:
        for u in accounts.list_users(s):
            state = "disabled" if u.disabled_at else ("password not set" if u.password_hash is None else "active")
            table.add_row(u.email, u.role.value, "on" if u.totp_secret else "off",
                          f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "never", state)
    console.print(table)


@users_group.command("disable")
@click.argument("email")
@pass_settings
def disable_cmd(settings, email: str) -> None:
    """Disable a console user: they cannot log in, and their sessions end now."""

    with db.session_scope(settings) as s:
        user = accounts.disable(s, email, actor=cli_actor())
        address = user.email
    console.print(f"Console user {address!r} disabled", highlight=False)
