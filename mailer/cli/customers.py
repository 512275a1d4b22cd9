"""``mailer customers import FILE [--strict] [--encoding NAME] [--delimiter CHAR]``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mailer.cli.base import EXIT_REJECTED, console, err_console, main, on_terminal, pass_settings
from mailer.customers.records import DEFAULT_DELIMITER, DEFAULT_ENCODING, check_delimiter, check_encoding, import_file

#: Bad rows printed at most; the rest are counted.
MAX_PRINTED_ERRORS = 50


@main.group("customers")
def customers_group() -> None:
    """Customer records."""


@customers_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Import nothing when any row is bad.")
@click.option("--encoding", default=DEFAULT_ENCODING, show_default=True,
              help="The file's text encoding: any Python codec name (utf-8-sig for a byte-order mark, cp1252, "
                   "latin-1, ...).")
@click.option("--delimiter", default=DEFAULT_DELIMITER, show_default=True,
              help="The field separator: one character such as ';' or '\\t' (tab).")
@pass_settings
def import_cmd(settings, path: Path, strict: bool, encoding: str, delimiter: str) -> None:
    """Create or update customers by e-mail from a CSV file.

    Columns: email, first_name, last_name, locale, timezone, country, tags (; or ,
    separated), total_spent, currency, orders_count, last_order_at,
    predicted_spend_tier (high/medium/low). Exit code 1 when rows were rejected; a
    bad row (wrong encoding, unterminated quote, NUL byte, wrong number of values) is
    reported and the good rows around it are still imported.
    """
    check_encoding(encoding)
    delimiter = check_delimiter(delimiter)
    if on_terminal():
        with open(path, "rb") as fh:
            total = sum(1 for _ in fh) - 1
        with Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task("rows", total=max(total, 0))
            result = import_file(settings, path, strict=strict, progress=lambda n: bar.advance(task, n),
                                 encoding=encoding, delimiter=delimiter)
    else:
        result = import_file(settings, path, strict=strict, encoding=encoding, delimiter=delimiter)
    for error in result.errors[:MAX_PRINTED_ERRORS]:
        click.echo(f"{path}: {error}", err=True)
    if len(result.errors) > MAX_PRINTED_ERRORS:
        err_console.print(f"... and {len(result.errors) - MAX_PRINTED_ERRORS} more bad rows")
    if result.strict_aborted:
        err_console.print(f"--strict: {len(result.errors)} bad row(s); nothing imported", markup=False)
    else:
        console.print(f"imported {result.imported} customers ({result.created} new, {result.updated} updated), "
                      f"rejected {len(result.errors)} row(s)")
    if result.errors:
        raise SystemExit(EXIT_REJECTED)
