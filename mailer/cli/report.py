"""``mailer report csat|revenue|health``: satisfaction score, revenue per automation rule, sender health."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import click
from rich.table import Table

from mailer import db
from mailer.campaigns import reports
from mailer.cli.base import console, main, pass_settings
from mailer.customers import attribution
from mailer.delivery import brakes


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


@report_group.command("revenue")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@pass_settings
def revenue_cmd(settings, as_json: bool) -> None:
    """Attributed orders, revenue per currency, conversion rate and revenue per recipient per
    automation rule (campaigns: mailer campaign status / report)."""

    with db.session_scope(settings) as s:
        rules = attribution.automation_revenue(s)
    if as_json:
        click.echo(json.dumps({name: figures.as_dict(recipients) | {"recipients": recipients}
                               for name, (figures, recipients) in rules.items()}, indent=2, sort_keys=True))
        return
    table = Table("automation rule", "recipients", "attributed orders", "conversion", "revenue",
                  "revenue per recipient")
    for name, (figures, recipients) in rules.items():
        table.add_row(name, str(recipients), str(figures.orders), f"{figures.conversion_rate(recipients) * 100:.2f} %",
                      "  ".join(f"{v} {c}" for c, v in sorted(figures.revenue.items())) or "-",
                      "  ".join(f"{v} {c}" for c, v in sorted(figures.per_recipient(recipients).items())) or "-")
    console.print(table)


@report_group.command("health")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@pass_settings
def health_cmd(settings, as_json: bool) -> None:
    """Sender health: the rolling 24-hour complaint rate per sending domain (against 0.1 % and
    0.3 %) and the unsubscribe latency of the last 30 days (against 2 days)."""

    with db.session_scope(settings) as s:
        domains = brakes.domain_complaint_rates(s, settings)
        latency = brakes.unsubscribe_latency(s)
    if as_json:
        click.echo(json.dumps({"domains": [d.as_dict() for d in domains], "unsubscribe_latency": latency.as_dict()},
                              indent=2, sort_keys=True))
        return
    table = Table("sending domain", "sent (24 h)", "complaints", "rate", "level")
    for d in domains:
        table.add_row(d.domain, str(d.sent), str(d.complaints), f"{d.rate * 100:.3f} %", d.level)
    console.print(table)
    console.print(f"unsubscribe latency (30 days): {latency.unsubscribes} unsubscribes, {latency.mailed_after} "
                  f"mailed after the click, worst {latency.max_s / 3600:.1f} h; "
                  f"{'within' if latency.within_limit else 'OVER'} the 2-day limit", highlight=False)
