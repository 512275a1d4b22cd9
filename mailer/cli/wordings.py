"""``mailer wordings list``: every consent wording version with the SHA-256 of its exact text."""

from __future__ import annotations

from rich.table import Table

from mailer import db
from mailer.cli.base import console, main, pass_settings
from mailer.consent import wordings


@main.group("wordings")
def wordings_group() -> None:
    """Consent wordings (wordings/<id>.toml): the exact words behind each grant."""


@wordings_group.command("list")
@pass_settings
def list_cmd(settings) -> None:
    """Every wording, locale and version mailer knows, with its SHA-256 (reading the files registers new ones)."""

    table = Table("wording", "locale", "version", "sha256", "text")
    with db.session_scope(settings) as s:
        rows = wordings.list_all(s, settings)
        for v in rows:
            table.add_row(v.wording_id, v.locale, v.version, v.sha256,
                          v.text if len(v.text) <= 60 else v.text[:59] + "…")
    console.print(table)
    if not rows:
        console.print(f"no wordings: add {settings.wordings_dir}/<id>.toml", highlight=False)
