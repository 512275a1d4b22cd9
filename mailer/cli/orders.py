"""``mailer orders import FILE [--strict] [--encoding NAME] [--delimiter CHAR]``: the shop's past orders."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mailer.cli.base import EXIT_REJECTED, console, err_console, main, on_terminal, pass_settings
from mailer.cli.customers import MAX_PRINTED_ERRORS
from mailer.customers.orders import import_orders_file, load_rates
from mailer.customers.records import DEFAULT_DELIMITER, DEFAULT_ENCODING, check_delimiter, check_encoding


@main.group("orders")
def orders_group() -> None:
    """The shop's order history (the prediction models are fitted on it)."""


@orders_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Import nothing when any row is bad.")
@click.option("--encoding", default=DEFAULT_ENCODING, show_default=True,
              help="The file's text encoding: any Python codec name (utf-8-sig, cp1252, latin-1, ...).")
@click.option("--delimiter", default=DEFAULT_DELIMITER, show_default=True,
              help="The field separator: one character such as ';' or '\\t' (tab).")
@pass_settings
def import_cmd(settings, path: Path, strict: bool, encoding: str, delimiter: str) -> None:
    """Create or update orders from a CSV file.

    Columns: email, order_id, placed_at (ISO 8601 date or date-time; UTC when no
    offset), total, currency (empty = the shop's, MAILER_DEFAULT_CURRENCY), and an
    optional status (placed, cancelled, refunded). Totals in other currencies are
    converted with MAILER_FX_RATES_FILE. Unknown addresses become customers. Exit
    code 1 when rows were rejected; the good rows around a bad one are still imported.
    """
    check_encoding(encoding)
    delimiter = check_delimiter(delimiter)
    load_rates(settings)
    if on_terminal():
        with open(path, "rb") as fh:
            total = sum(1 for _ in fh) - 1
        with Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task("rows", total=max(total, 0))
            result = import_orders_file(settings, path, strict=strict, progress=lambda n: bar.advance(task, n),
                                        encoding=encoding, delimiter=delimiter)
    else:
        result = import_orders_file(settings, path, strict=strict, encoding=encoding, delimiter=delimiter)
    for error in result.errors[:MAX_PRINTED_ERRORS]:
        click.echo(f"{path}: {error}", err=True)
    if len(result.errors) > MAX_PRINTED_ERRORS:
        err_console.print(f"... and {len(result.errors) - MAX_PRINTED_ERRORS} more bad rows")
    if result.strict_aborted:
        err_console.print(f"--strict: {len(result.errors)} bad row(s); nothing imported", markup=False)
    else:
        console.print(f"imported {result.imported} orders ({result.created} new, {result.updated} updated; "
                      f"{result.new_customers} new customers), rejected {len(result.errors)} row(s)", markup=False)
    if result.errors:
        raise SystemExit(EXIT_REJECTED)
