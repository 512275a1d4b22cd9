"""``mailer predict fit [--as-of DATE] [--json]``, ``mailer predict score [--as-of DATE]``, ``mailer predict show EMAIL``,
``mailer predict evaluate --calibration-end DATE``.

``score`` writes the figures, then raises the prediction triggers (``churn_risk_became``,
``expected_order_due``: :mod:`mailer.automations.predicted`) for the automations.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from mailer.app import get_app
from mailer.automations.predicted import raise_prediction_events
from mailer.cli.base import console, fold_table, main, pass_settings, setup_broker
from mailer.customers import predictions as service
from mailer.db import session_scope
from mailer.predictions.evaluate import chart_svg


@main.group("predict")
def predict_group() -> None:
    """Predicted lifetime value, churn risk and next order (BG/NBD and Gamma-Gamma)."""


def _as_of(ctx, param, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value.strip()[:10]) if len(value.strip()) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise click.BadParameter(f"{value[:40]!r} is not a date such as 1997-09-30", ctx=ctx, param=param)
    return day


_AS_OF = click.option("--as-of", "as_of", callback=_as_of, metavar="YYYY-MM-DD",
                      help="Use only orders up to the end of this day (UTC) and measure T to it; default today.")


@predict_group.command("fit")
@_AS_OF
@click.option("--json", "as_json", is_flag=True, help="Print the fit as one JSON object.")
@pass_settings
def fit_cmd(settings, as_of: dt.date | None, as_json: bool) -> None:
    """Fit the models on the orders and print the parameters (the fit is recorded, nothing else is written)."""
    outcome = service.run(settings, as_of=as_of, trigger="cli")
    out = outcome.models.to_dict()
    if as_json:
        click.echo(json.dumps(out))
        return
    b, g = out["bgnbd"], out["gamma_gamma"]
    console.print(f"fit as of {out['as_of']} on {out['customers']} customers (fit #{outcome.fit_id})", markup=False)
    console.print(f"BG/NBD:      r = {b['r']:.4f}, alpha = {b['alpha']:.4f}, a = {b['a']:.4f}, b = {b['b']:.4f}, "
                  f"log-likelihood = {b['log_likelihood']:.2f}", markup=False)
    console.print(f"Gamma-Gamma: p = {g['p']:.4f}, q = {g['q']:.4f}, gamma = {g['gamma']:.4f} "
                  f"({g['customers']} repeat buyers)", markup=False)
    if outcome.without_total:
        console.print(f"{outcome.without_total} placed order(s) left out: no total in the shop's currency",
                      markup=False)


@predict_group.command("score")
@_AS_OF
@pass_settings
def score_cmd(settings, as_of: dt.date | None) -> None:
    """Fit, then write every customer's p_alive, expected orders, predicted_clv, churn risk, tier, next order."""
    outcome = service.run(settings, as_of=as_of, trigger="cli", score=True)
    console.print(f"scored {outcome.scored} customers as of {outcome.fit.models.as_of} "
                  f"({outcome.not_scored} with orders not scored: first order too recent)", markup=False)
    setup_broker(settings)
    triggers = raise_prediction_events(get_app(), as_of=outcome.fit.models.as_of)
    console.print(triggers.summary(), markup=False)


@predict_group.command("show")
@click.argument("email")
@pass_settings
def show_cmd(settings, email: str) -> None:
    """Explain one customer's figures in words."""
    with session_scope(settings) as s:
        lines = service.explain(s, settings, email)
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _day(ctx, param, value: str | None) -> dt.date | None:
    return _as_of(ctx, param, value)


@predict_group.command("evaluate")
@click.option("--calibration-end", "calibration_end", required=True, callback=_day, metavar="YYYY-MM-DD",
              help="Fit on the orders up to the end of this day; the hold-out period starts the day after.")
@click.option("--holdout-end", "holdout_end", callback=_day, metavar="YYYY-MM-DD",
              help="Last day of the hold-out period; default the day of the last placed order.")
@click.option("--chart", "chart", type=click.Path(dir_okay=False, writable=True), default="predict-evaluation.svg",
              show_default=True, help="Where to write the chart (SVG).")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as one JSON object.")
@pass_settings
def evaluate_cmd(settings, calibration_end: dt.date, holdout_end: dt.date | None, chart: str,
                 as_json: bool) -> None:
    """Hold-out check: fit before --calibration-end, compare predicted and actual orders after it."""
    with session_scope(settings) as s:
        ev = service.evaluate(s, settings, calibration_end=calibration_end, holdout_end=holdout_end)
    try:
        Path(chart).write_text(chart_svg(ev), encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"cannot write {chart}: {exc.strerror}", param_hint="--chart") from exc
    if as_json:
        click.echo(json.dumps({**ev.as_dict(), "chart": chart}))
        return
    p = ev.params
    console.print(f"calibration: orders up to {ev.calibration_end}, {ev.total.customers} customers; BG/NBD r = "
                  f"{p.r:.4f}, alpha = {p.alpha:.4f}, a = {p.a:.4f}, b = {p.b:.4f}", markup=False)
    console.print(f"hold-out: {ev.calibration_end + dt.timedelta(days=1)} to {ev.holdout_end} "
                  f"({ev.holdout_weeks:.1f} weeks)", markup=False)
    table = fold_table("calibration x", "customers", "actual / customer", "predicted / customer", "error")
    for g in (*ev.groups, ev.total):
        table.add_row(g.label, str(g.customers), f"{g.actual:.3f}", f"{g.predicted:.3f}", f"{g.error:+.3f}")
    console.print(table)
    console.print(f"total hold-out transactions: actual {ev.actual_transactions}, predicted "
                  f"{ev.predicted_transactions:.1f} ({ev.total_error_percent:+.1f}%); per customer MAE "
                  f"{ev.mean_absolute_error:.3f}, RMSE {ev.rmse:.3f}", markup=False)
    console.print(f"chart: {chart}", markup=False)
