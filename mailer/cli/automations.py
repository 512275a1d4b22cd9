"""``mailer automations list``, ``mailer automations pending [--customer EMAIL]`` and
``mailer automations holdout [--days N] [--json]``."""

from __future__ import annotations

import json

import click

from mailer.automations import describe, load_each, pending
from mailer.automations.views import holdout_figures
from mailer.cli.base import EXIT_REJECTED, console, err_console, main, pass_settings
from mailer.db import session_scope
from mailer.errors import ConfigurationError


@main.group("automations")
def automations_group() -> None:
    """Rules in automations/*.toml that turn shop events into notices."""


@automations_group.command("list")
@pass_settings
def list_cmd(settings) -> None:
    """Show every rule: trigger, notice kind, delays, group, what cancels it.

    A bad file is listed as invalid with the reason (exit 1); the other rules still list.
    """

    checked = load_each(settings)
    if not checked:
        console.print(f"no automations in {settings.automations_dir}", markup=False)
        return
    invalid = 0
    for path, r in checked:
        if isinstance(r, ConfigurationError):
            invalid += 1
            message = str(r) if str(path) in str(r) else f"{path}: {r}"
            err_console.print(f"invalid: {message}", markup=False, highlight=False, soft_wrap=True)
            continue
        lines = [f"{r.name}{'' if r.enabled else '  [disabled]'}  ({r.path})"]
        lines += ["  " + line for line in describe(r)]
        console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    if invalid:
        err_console.print(f"{invalid} invalid automation file(s)", markup=False, highlight=False)
        raise SystemExit(EXIT_REJECTED)


@automations_group.command("pending")
@click.option("--customer", "email", default=None, help="Only this customer's (e-mail address).")
@click.option("--limit", default=1000, show_default=True, help="Show at most this many.")
@pass_settings
def pending_cmd(settings, email: str | None, limit: int) -> None:
    """Show scheduled automation sends, soonest first."""

    with session_scope(settings) as s:
        rows = pending(s, email=email, limit=limit)
    if not rows:
        console.print("nothing scheduled" + (f" for {email}" if email else ""), markup=False)
        return
    for p in rows:
        when = p.send_after.strftime("%Y-%m-%d %H:%M UTC") if p.send_after else "-"
        kind = "" if p.kind == p.automation else f" ({p.kind})"
        summary = ", ".join(f"{k}={_short(v)}" for k, v in sorted(p.data.items()))
        console.print(f"{p.delivery_id}  {when}  {p.automation}{kind} -> {p.email or f'customer {p.customer_id}'}"
                      f"  [{p.group}]  {summary}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"{len(rows)} scheduled", markup=False)


#: Longest data value shown by ``pending``, characters.
SHOWN_VALUE_CHARS = 40


def _short(value) -> str:
    """A data value in a few words: item names for lists of items, a count for other lists."""
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return "[" + "; ".join(_short(v.get("name") or v.get("sku")) for v in value) + "]"
        return f"[{len(value)} items]"
    if isinstance(value, dict):  # text per locale
        value = next(iter(value.values()), "")
    text = str(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS - 1] + "…"


@automations_group.command("holdout")
@click.option("--days", type=click.IntRange(1, 365), default=None,
              help="Orders counted this many days after each send (default MAILER_ATTRIBUTION_CLICK_DAYS).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@pass_settings
def holdout_cmd(settings, days: int | None, as_json: bool) -> None:
    """Incremental revenue of rules with holdout_percent: mailed sends against held-out ones."""

    window = days or settings.attribution_click_days
    with session_scope(settings) as s:
        figures = holdout_figures(s, window_days=window)
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in figures], indent=2))
        return
    if not figures:
        console.print("no automation has held anyone out (set holdout_percent in a rule)", markup=False)
        return
    for f in figures:
        console.print(f"{f.rule}: mailed {f.mailed.sends} sends, {f.mailed.conversion_rate * 100:.1f} % ordered "
                      f"within {window} days, {f.mailed.per_send} per send; holdout {f.holdout.sends} sends, "
                      f"{f.holdout.conversion_rate * 100:.1f} % ordered, {f.holdout.per_send} per send; "
                      f"incremental revenue {f.incremental_revenue} ({settings.default_currency})",
                      markup=False, highlight=False, soft_wrap=True)
