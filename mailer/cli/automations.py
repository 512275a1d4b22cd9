"""``mailer automations list`` and ``mailer automations pending [--customer EMAIL]``."""

from __future__ import annotations

import click
from rich.table import Table

from mailer.cli.base import console, main, pass_settings


@main.group("automations")
def automations_group() -> None:
    """Rules in automations/*.toml that turn shop events into notices."""


@automations_group.command("list")
@pass_settings
def list_cmd(settings) -> None:
    """Show every rule: trigger, notice kind, delays, group, what cancels it. Fails on a bad file."""
    from mailer.automations import load

    rules = load(settings)
    if not rules:
        console.print(f"no automations in {settings.automations_dir}", markup=False)
        return
    table = Table("name", "on event", "sends", "after", "group", "cancelled by", "rules", "file")
    for r in rules:
        extras = []
        if not r.enabled:
            extras.append("DISABLED")
        extras.append("transactional" if r.transactional else f"marketing ({r.purpose})")
        if r.once:
            extras.append("once per group")
        if r.repeat:
            from mailer.automations import format_duration

            changed = f" unless {', '.join(r.repeat.unless_changed)} changed" if r.repeat.unless_changed else ""
            extras.append(f"no repeat within {format_duration(r.repeat.window)}{changed}")
        if r.merge:
            from mailer.automations import format_duration

            extras.append(f"merge into {r.merge.into} within {format_duration(r.merge.window)}")
        if r.waves:
            extras.append(f"waves of max(stock x {r.waves.per_unit:g}, {r.waves.min_size})")
        if r.reward:
            extras.append(f"code from pool {r.reward.pool}")
        if r.audience != "customer":
            extras.append(f"to {r.audience}")
        if r.event_if or r.customer_if or r.became:
            extras.append("conditions")
        if not r.transactional and r.quiet_hours:
            extras.append("quiet hours")
        table.add_row(r.name, r.event, r.kind, r.describe_delays(), r.group, ", ".join(r.cancelled_by) or "-",
                      "; ".join(extras), r.path.name)
    console.print(table)


@automations_group.command("pending")
@click.option("--customer", "email", default=None, help="Only this customer's (e-mail address).")
@click.option("--limit", default=1000, show_default=True, help="Show at most this many.")
@pass_settings
def pending_cmd(settings, email: str | None, limit: int) -> None:
    """Show scheduled automation sends, soonest first."""
    from mailer.automations import pending
    from mailer.db import session_scope

    with session_scope(settings) as s:
        rows = pending(s, email=email, limit=limit)
    if not rows:
        console.print("nothing scheduled" + (f" for {email}" if email else ""), markup=False)
        return
    table = Table("delivery", "automation", "kind", "customer", "send after (UTC)", "group", "data")
    for p in rows:
        summary = ", ".join(f"{k}={_short(v)}" for k, v in sorted(p.data.items()))
        table.add_row(str(p.delivery_id), p.automation, p.kind, p.email or f"#{p.customer_id}",
                      p.send_after.strftime("%Y-%m-%d %H:%M:%S") if p.send_after else "", p.group or "",
                      summary[:120])
    console.print(table)
    console.print(f"{len(rows)} scheduled", markup=False)


def _short(value) -> str:
    if isinstance(value, list):
        names = [str(v.get("name") or v.get("sku")) if isinstance(v, dict) else str(v) for v in value]
        return "[" + "; ".join(names) + "]"
    return str(value)
