"""``mailer codes import POOL FILE`` and ``mailer codes status POOL``: reward-code pools."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mailer.automations.codes import import_file, pools, status
from mailer.cli.base import EXIT_REJECTED, console, main, pass_settings
from mailer.db import session_scope

#: Bad rows printed at most; the rest are counted.
MAX_PRINTED_ERRORS = 50


@main.group("codes")
def codes_group() -> None:
    """Discount and gift-card code pools for reward automations."""


@codes_group.command("import")
@click.argument("pool")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_settings
def import_cmd(settings, pool: str, path: Path) -> None:
    """Load unique codes from a CSV file into POOL.

    One code per row; optional columns value and expires_at (ISO date). A header row
    "code,value,expires_at" is optional. All or nothing: any bad row imports nothing
    (exit code 1). Codes already in the pool are kept as they are.
    """
    result = import_file(settings, pool, path)
    for error in result.errors[:MAX_PRINTED_ERRORS]:
        click.echo(f"{path}: {error}", err=True)
    if len(result.errors) > MAX_PRINTED_ERRORS:
        click.echo(f"... and {len(result.errors) - MAX_PRINTED_ERRORS} more bad rows", err=True)
    if result.errors:
        click.echo(f"{len(result.errors)} bad row(s): nothing imported into pool {pool}", err=True)
        raise SystemExit(EXIT_REJECTED)
    console.print(f"pool {pool}: added {result.added} codes, {result.already_present} already present",
                  markup=False)


@codes_group.command("status")
@click.argument("pool")
@pass_settings
def status_cmd(settings, pool: str) -> None:
    """Show how many codes POOL has, has given out, and has left."""

    with session_scope(settings) as s:
        st = status(s, pool)
        known = pools(s)
    if st.total == 0:
        hint = f" (pools: {', '.join(known)})" if known else ""
        console.print(f"pool {pool} has no codes{hint}; load some with: mailer codes import {pool} codes.csv",
                      markup=False)
        raise SystemExit(EXIT_REJECTED)
    table = Table("pool", "total", "given out", "waiting to be mailed", "expired unused", "left")
    table.add_row(pool, str(st.total), str(st.assigned), str(st.waiting), str(st.expired), str(st.free))
    console.print(table)
    if st.free == 0:
        console.print(f"pool {pool} is exhausted: reward automations using it send nothing until you import "
                      "more codes", markup=False)
