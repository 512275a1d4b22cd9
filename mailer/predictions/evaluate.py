"""Hold-out evaluation of BG/NBD: fit before a day, compare predicted and actual orders after it.

The set-up of Fader, Hardie & Lee (2005), section 4: the customers whose first order is
up to the calibration end are fitted on their calibration orders (``T`` measured to the
calibration end); for each, the model's expected repeat transactions in the hold-out
period (calibration end, hold-out end] (eq. 10 with t = its length in weeks) are set
against the transactions (order days) they actually made in it.  As in the paper's
figure of conditional expectations, customers are grouped by their calibration
frequency ``x`` (0, 1, ..., 6, and 7 or more); each group and the total get the mean
actual and predicted transactions per customer and the error.  :func:`chart_svg` draws
that figure as a self-contained SVG (no script, no external resources).

Database-free: :func:`evaluate` takes the orders as arrays (``mailer predict evaluate``
reads them from the orders table).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape

import numpy as np

from mailer.predictions import bgnbd, scores
from mailer.predictions.summary import DAYS_PER_WEEK, build_summary

#: Frequency groups: x = 0 .. GROUP_CAP - 1 on their own, then GROUP_CAP or more together.
GROUP_CAP = 7


@dataclass(frozen=True)
class Group:
    label: str  # "0", "1", ..., "7+", or "total"
    customers: int
    actual: float  # mean actual hold-out transactions per customer
    predicted: float  # mean expected hold-out transactions per customer

    @property
    def error(self) -> float:
        """predicted − actual, per customer."""
        return self.predicted - self.actual

    def as_dict(self) -> dict:
        return {"group": self.label, "customers": self.customers, "actual": round(self.actual, 4),
                "predicted": round(self.predicted, 4), "error": round(self.error, 4)}


@dataclass(frozen=True)
class Evaluation:
    calibration_end: dt.date
    holdout_end: dt.date
    holdout_weeks: float
    params: bgnbd.BGNBDParams
    groups: tuple[Group, ...]  # by calibration frequency
    total: Group  # over every customer (means per customer)
    actual_transactions: int  # hold-out repeat transactions, all customers
    predicted_transactions: float
    mean_absolute_error: float  # per customer, transactions
    rmse: float  # per customer, transactions

    @property
    def total_error_percent(self) -> float:
        if self.actual_transactions == 0:
            return float("nan")
        return 100.0 * (self.predicted_transactions - self.actual_transactions) / self.actual_transactions

    def as_dict(self) -> dict:
        p = self.params
        return {"calibration_end": self.calibration_end.isoformat(), "holdout_end": self.holdout_end.isoformat(),
                "holdout_weeks": round(self.holdout_weeks, 4), "customers": self.total.customers,
                "bgnbd": {"r": p.r, "alpha": p.alpha, "a": p.a, "b": p.b, "log_likelihood": p.log_likelihood},
                "actual_transactions": self.actual_transactions,
                "predicted_transactions": round(self.predicted_transactions, 2),
                "total_error_percent": round(self.total_error_percent, 2),
                "mean_absolute_error": round(self.mean_absolute_error, 4), "rmse": round(self.rmse, 4),
                "groups": [g.as_dict() for g in self.groups], "total": self.total.as_dict()}


def evaluate(customer_ids, days, amounts, *, calibration_end: dt.date, holdout_end: dt.date,
             history: scores.HistoryRule | None = None) -> Evaluation:
    """Fit on the orders up to ``calibration_end``; compare with the orders up to ``holdout_end``.

    ``days`` are datetime64[D] (or dates).  Raises ValueError when the hold-out period is
    empty and :class:`~mailer.predictions.scores.NotEnoughHistory` when the calibration
    orders are too few to fit.
    """
    if holdout_end <= calibration_end:
        raise ValueError(f"the hold-out end {holdout_end} must be after the calibration end {calibration_end}")
    ids = np.asarray(customer_ids, dtype=np.int64)
    days = np.asarray(days, dtype="datetime64[D]")
    amounts = np.asarray(amounts, dtype=np.float64)
    cal = days <= np.datetime64(calibration_end, "D")
    summary = build_summary(ids[cal], days[cal], amounts[cal], calibration_end)
    models = scores.fit(summary, history or scores.HistoryRule())
    params = models.bgnbd
    # Hold-out transactions: distinct order days per calibration customer in (cal end, hold-out end].
    hold = ~cal & (days <= np.datetime64(holdout_end, "D"))
    pairs = np.unique(np.stack([ids[hold], days[hold].astype(np.int64)]), axis=1) if hold.any() else \
        np.empty((2, 0), np.int64)
    holdout_ids, counts = np.unique(pairs[0], return_counts=True)
    actual = np.zeros(len(summary), dtype=np.float64)
    pos = np.searchsorted(summary.customer_ids, holdout_ids)
    known = (pos < len(summary)) & (summary.customer_ids[np.minimum(pos, len(summary) - 1)] == holdout_ids)
    actual[pos[known]] = counts[known]  # orders of customers who first bought after the calibration end are left out
    weeks = (holdout_end - calibration_end).days / DAYS_PER_WEEK
    predicted = bgnbd.expected_transactions(params, weeks, summary.x, summary.t_x_weeks, summary.T_weeks)
    groups = []
    capped = np.minimum(summary.x, GROUP_CAP)
    for g in range(GROUP_CAP + 1):
        sel = capped == g
        if sel.any():
            groups.append(Group(f"{g}+" if g == GROUP_CAP else str(g), int(sel.sum()), float(actual[sel].mean()),
                                float(predicted[sel].mean())))
    diff = predicted - actual
    return Evaluation(calibration_end, holdout_end, weeks, params, tuple(groups),
                      Group("total", len(summary), float(actual.mean()), float(predicted.mean())),
                      int(actual.sum()), float(predicted.sum()), float(np.abs(diff).mean()),
                      float(np.sqrt((diff ** 2).mean())))


# -- the chart -------------------------------------------------------------------------------------
_W, _H = 720, 430
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 60, 70
ACTUAL_COLOUR, PREDICTED_COLOUR = "#2b6cb0", "#dd6b20"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** np.floor(np.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def chart_svg(ev: Evaluation, *, title: str = "Hold-out: actual vs. BG/NBD predicted transactions") -> str:
    """The conditional-expectations figure as an SVG document: bars of actual and predicted
    mean hold-out transactions per customer, by calibration frequency."""
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    top = _nice_max(max([g.actual for g in ev.groups] + [g.predicted for g in ev.groups] + [0.0]) * 1.05)
    n = max(len(ev.groups), 1)
    slot = plot_w / n
    bar = slot * 0.36

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / top)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
           'font-family="sans-serif" font-size="12">',
           f'<title>{escape(title)}</title>',
           f'<rect width="{_W}" height="{_H}" fill="#ffffff"/>',
           f'<text x="{_W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text x="{_W / 2}" y="40" text-anchor="middle" fill="#444">calibration to {ev.calibration_end}, '
           f'hold-out {ev.holdout_weeks:.1f} weeks to {ev.holdout_end}; total actual {ev.actual_transactions}, '
           f'predicted {ev.predicted_transactions:.0f} ({ev.total_error_percent:+.1f}%)</text>']
    for i in range(6):
        v = top * i / 5
        out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e2e2e2"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for i, g in enumerate(ev.groups):
        x0 = _LEFT + i * slot + slot * 0.14
        for j, (value, colour, name) in enumerate(((g.actual, ACTUAL_COLOUR, "actual"),
                                                   (g.predicted, PREDICTED_COLOUR, "predicted"))):
            bx = x0 + j * bar
            out.append(f'<rect class="{name}" x="{bx:.1f}" y="{y(value):.1f}" width="{bar:.1f}" '
                       f'height="{max(y(0) - y(value), 0):.1f}" fill="{colour}"><title>x = {escape(g.label)}: '
                       f'{name} {value:.3f} per customer ({g.customers} customers)</title></rect>')
        out.append(f'<text x="{_LEFT + (i + 0.5) * slot:.1f}" y="{y(0) + 16:.1f}" text-anchor="middle">'
                   f'{escape(g.label)}</text>')
        out.append(f'<text x="{_LEFT + (i + 0.5) * slot:.1f}" y="{y(0) + 30:.1f}" text-anchor="middle" '
                   f'fill="#777" font-size="10">n={g.customers}</text>')
    out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#333"/>')
    out.append(f'<text x="{_LEFT + plot_w / 2}" y="{_H - 12}" text-anchor="middle">repeat transactions in the '
               'calibration period (x)</text>')
    out.append(f'<text transform="translate(18 {_TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">'
               'hold-out transactions per customer</text>')
    lx = _LEFT + 12
    for k, (colour, name) in enumerate(((ACTUAL_COLOUR, "actual"), (PREDICTED_COLOUR, "BG/NBD predicted"))):
        out.append(f'<rect x="{lx + k * 150}" y="{_TOP - 2}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + k * 150 + 18}" y="{_TOP + 8}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
