"""``mailer report csat [--since]``: the satisfaction score from survey ratings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click
from rich.table import Table

from mailer import db
from mailer.campaigns import reports
from mailer.cli.base import console, main, pass_settings


@main.group("report")
def report_group() -> None:
    """Reports across campaigns and notices (campaign reports: mailer campaign report)."""


def parse_since(value: str | None) -> datetime | None:
    """``30d``, ``12h`` or an ISO-8601 date/time (UTC when it has no offset)."""
    if value is None:
        return None
    m = re.fullmatch(r"(\d+)([dh])", value.strip())
    if m:
        n = int(m.group(1))
        return datetime.now(UTC) - (timedelta(days=n) if m.group(2) == "d" else timedelta(hours=n))
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use 30d, 12h or an ISO-8601 date such as 2026-11-01",
                                 param_hint="--since") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@report_group.command("csat")
@click.option("--since", default=None, help="Only ratings given since: 30d, 12h or an ISO-8601 date.")
@pass_settings
def csat_cmd(settings, since: str | None) -> None:
    """CSAT score (share of 4-5 ratings), average and count; one rating per order, last click wins."""

    with db.session_scope(settings) as s:
        r = reports.csat(s, since=parse_since(since))
    console.print(f"CSAT {r.score * 100:.1f} % (ratings 4-5)  average {r.average:.2f} / 5  from {r.count} "
                  f"ratings{' since ' + since if since else ''}", highlight=False)
    table = Table("rating", "count")
    for rating in range(5, 0, -1):
        table.add_row("★" * rating, str(r.distribution[rating]))
    console.print(table)
