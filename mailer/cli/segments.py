"""``mailer segments list`` and ``mailer segments show NAME [--count] [--sample N]``."""

from __future__ import annotations

import time

import click
from rich.table import Table

from mailer import db, segments
from mailer.cli.base import EXIT_REJECTED, console, err_console, fold_table, main, pass_settings
from mailer.errors import SegmentError


@main.group("segments")
def segments_group() -> None:
    """Declarative segments (segments/<name>.toml or .yaml)."""


@segments_group.command("list")
@pass_settings
def list_cmd(settings) -> None:
    """Every segment with its consent purpose; invalid files are reported (exit 1)."""
    table = fold_table("segment", "purpose", "description", "file")
    bad = 0
    for path in segments.segment_files(settings):
        try:
            seg = segments.load(settings, path.stem)
        except SegmentError as exc:
            bad += 1
            message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            err_console.print(f"invalid: {message}", highlight=False, markup=False, soft_wrap=True)
            table.add_row(path.stem, "-", "INVALID (see above)", str(path.name))
            continue
        table.add_row(seg.name, seg.purpose, seg.description, str(path.name))
    console.print(table)
    if bad:
        raise SystemExit(EXIT_REJECTED)


@segments_group.command("show")
@click.argument("name")
@click.option("--count", "do_count", is_flag=True, help="Count the recipients right now.")
@click.option("--sample", type=click.IntRange(1, 1000), default=None, help="Show the first N recipients.")
@pass_settings
def show_cmd(settings, name: str, do_count: bool, sample: int | None) -> None:
    """Show a segment's definition; --count and --sample resolve it against the database."""
    seg = segments.load(settings, name)
    console.print(f"[bold]{seg.name}[/]: {seg.description}" if seg.description else f"[bold]{seg.name}[/]")
    console.print(f"file:      {seg.path}", highlight=False, soft_wrap=True)
    console.print(f"purpose:   {seg.purpose} (current consent required; suppressed addresses excluded)",
                  highlight=False, soft_wrap=True)
    console.print(f"condition: {segments.describe(seg.conditions)}", highlight=False, soft_wrap=True)
    if not (do_count or sample):
        return
    with db.session_scope(settings) as s:
        if do_count:
            t0 = time.perf_counter()
            n = segments.count(s, settings, seg)
            console.print(f"count:     {n} recipients ({(time.perf_counter() - t0) * 1000:.0f} ms)", highlight=False, soft_wrap=True)
        if sample:
            rows = segments.sample(s, settings, seg, sample)
            table = Table("customer", "email", "name", "locale", "time zone", title=f"first {len(rows)} recipients")
            for r in rows:
                table.add_row(str(r.customer_id), r.email, " ".join(p for p in (r.first_name, r.last_name) if p),
                              r.locale or "", r.timezone or "")
            console.print(table)
