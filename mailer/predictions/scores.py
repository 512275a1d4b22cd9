"""Per-customer prediction figures from an RFM summary: the minimum-history rule, fit and score.

Owns the product's view of the two models: whether there is enough order history to fit
them at all (:func:`check_history`), fitting both on one summary (:func:`fit`), and turning
the fitted parameters into each customer's figures (:func:`score`): ``p_alive``, expected
orders in the next 90 and 365 days, ``predicted_clv``, ``expected_next_order_at``,
``churn_risk`` and ``predicted_spend_tier``.  The CLI, the worker's daily refit and the
segment fields are meant to be thin wrappers around these three functions; nothing here
touches a database.

Scores are never invented: a customer the rules say cannot be scored gets NaN / NaT and
the label code -1 (:data:`NOT_SCORED`), and a shop without enough history gets
:class:`NotEnoughHistory` naming every unmet requirement.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from mailer.predictions import bgnbd, gammagamma
from mailer.predictions.summary import DAYS_PER_WEEK, RFMSummary

NOT_SCORED = -1
CHURN_RISK_LABELS = ("low", "medium", "high")
SPEND_TIER_LABELS = ("low", "medium", "high")


class NotEnoughHistory(ValueError):
    """The orders do not meet the minimum history; ``reasons`` lists each unmet requirement."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("not enough order history to fit the prediction models: " + "; ".join(self.reasons))


@dataclass(frozen=True)
class HistoryRule:
    """The minimum history (modelled on Klaviyo's published requirements for predictive analytics).

    To fit: at least ``min_customers`` customers with an order, at least
    ``min_repeat_customers`` of them with a repeat order (a second order on another day),
    and ``min_history_days`` days from the first order in the data to the as-of day.
    To score one customer: their first order is at least ``min_customer_age_days`` days
    before the as-of day.
    """

    min_customers: int = 500
    min_repeat_customers: int = 100
    min_history_days: int = 180
    min_customer_age_days: int = 7


@dataclass(frozen=True)
class ScoreConfig:
    """How the fitted models become figures (the later settings map onto these fields)."""

    churn_horizon_days: float = 90.0
    churn_thresholds: tuple[float, float] = (0.33, 0.66)  # P(no order): low < 0.33 <= medium <= 0.66 < high
    spend_tier_quantiles: tuple[float, float] = (0.5, 0.8)  # of predicted_clv: low < q1 <= medium < q2 <= high
    clv_months: int = 12
    clv_discount_rate_monthly: float = 0.01
    history: HistoryRule = field(default_factory=HistoryRule)

    def __post_init__(self):
        lo, hi = self.churn_thresholds
        if not 0 < lo <= hi < 1:
            raise ValueError(f"churn_thresholds must satisfy 0 < low <= high < 1, got {self.churn_thresholds}")
        q1, q2 = self.spend_tier_quantiles
        if not 0 < q1 <= q2 < 1:
            raise ValueError(f"spend_tier_quantiles must satisfy 0 < q1 <= q2 < 1, got {self.spend_tier_quantiles}")
        if not 0 < self.churn_horizon_days <= 3660:
            raise ValueError(f"churn_horizon_days must be in (0, 3660], got {self.churn_horizon_days}")


@dataclass(frozen=True)
class FittedModels:
    as_of: dt.date
    customers: int
    bgnbd: bgnbd.BGNBDParams
    gamma_gamma: gammagamma.GammaGammaParams

    def to_dict(self) -> dict:
        """The shape of ``mailer predict fit --json``."""
        return {
            "as_of": self.as_of.isoformat(),
            "customers": self.customers,
            "bgnbd": {k: getattr(self.bgnbd, k) for k in ("r", "alpha", "a", "b", "log_likelihood")},
            "gamma_gamma": {k: getattr(self.gamma_gamma, k) for k in ("p", "q", "gamma", "customers")},
        }


@dataclass(frozen=True)
class Scores:
    """Aligned per-customer arrays; unscored customers hold NaN, NaT and :data:`NOT_SCORED`."""

    as_of: dt.date
    customer_ids: np.ndarray
    scored: np.ndarray  # bool
    p_alive: np.ndarray
    expected_orders_90d: np.ndarray
    expected_orders_365d: np.ndarray
    prob_no_order_churn_horizon: np.ndarray  # P(no order in the next churn_horizon_days)
    expected_spend: np.ndarray  # per order
    predicted_clv: np.ndarray
    expected_next_order_at: np.ndarray  # datetime64[D]
    churn_risk_code: np.ndarray  # int8 index into CHURN_RISK_LABELS
    spend_tier_code: np.ndarray  # int8 index into SPEND_TIER_LABELS

    def churn_risk(self, i: int) -> str | None:
        code = int(self.churn_risk_code[i])
        return None if code == NOT_SCORED else CHURN_RISK_LABELS[code]

    def predicted_spend_tier(self, i: int) -> str | None:
        code = int(self.spend_tier_code[i])
        return None if code == NOT_SCORED else SPEND_TIER_LABELS[code]


def check_history(summary: RFMSummary, rule: HistoryRule | None = None) -> None:
    """Raise :class:`NotEnoughHistory` unless ``summary`` meets ``rule``'s fit requirements."""
    rule = rule or HistoryRule()
    reasons = []
    n = len(summary)
    if n < rule.min_customers:
        reasons.append(f"{n} customers with an order, at least {rule.min_customers} needed")
    repeat = int(np.count_nonzero(summary.x > 0))
    if repeat < rule.min_repeat_customers:
        reasons.append(f"{repeat} customers with a repeat order, at least {rule.min_repeat_customers} needed")
    span_days = int(round(float(summary.T_weeks.max()) * DAYS_PER_WEEK)) if n else 0
    if span_days < rule.min_history_days:
        reasons.append(f"{span_days} days of order history before the as-of day, at least "
                       f"{rule.min_history_days} needed")
    if reasons:
        raise NotEnoughHistory(reasons)


def fit(summary: RFMSummary, rule: HistoryRule | None = None) -> FittedModels:
    """Fit BG/NBD on every customer and Gamma-Gamma on the repeat buyers (as the papers do)."""
    check_history(summary, rule)
    purchases = bgnbd.fit(summary.x, summary.t_x_weeks, summary.T_weeks)
    spend = gammagamma.fit(summary.x, summary.mean_spend)
    if not spend.q > 1:
        raise NotEnoughHistory([f"the spend model has no finite mean (q = {spend.q:.3g} <= 1): spend per order "
                                "varies too much across customers for the data available"])
    return FittedModels(as_of=summary.as_of, customers=len(summary), bgnbd=purchases, gamma_gamma=spend)


def _bin(values: np.ndarray, edges: tuple[float, float], mask: np.ndarray, *, high_edge_inclusive: bool) -> np.ndarray:
    """0/1/2 where ``mask`` (1 from the first edge on, 2 from/above the second edge), else NOT_SCORED."""
    low_edge, high_edge = edges
    above_high = values >= high_edge if high_edge_inclusive else values > high_edge
    codes = (values >= low_edge).astype(np.int8) + above_high.astype(np.int8)
    return np.where(mask, codes, np.int8(NOT_SCORED)).astype(np.int8)


def score(summary: RFMSummary, models: FittedModels, config: ScoreConfig | None = None) -> Scores:
    """Every customer's figures as of ``summary.as_of`` under the fitted ``models``.

    * ``churn_risk``: P(no order in the next ``churn_horizon_days``) below 0.33 is low,
      above 0.66 high, otherwise medium;
    * ``predicted_spend_tier``: high from the ``q2`` quantile of ``predicted_clv`` over the
      scored customers, medium from ``q1``, otherwise low;
    * ``expected_next_order_at``: as-of + the median wait for the next order of an active
      customer (rounded to whole days).
    """
    config = config or ScoreConfig()
    if models.as_of != summary.as_of:
        raise ValueError(f"models fitted as of {models.as_of} cannot score a summary as of {summary.as_of}")
    pb, pg = models.bgnbd, models.gamma_gamma
    x, t_x, T = summary.x, summary.t_x_weeks, summary.T_weeks
    age_days = np.rint(T * DAYS_PER_WEEK)
    scored = age_days >= config.history.min_customer_age_days

    def masked(values: np.ndarray) -> np.ndarray:
        return np.where(scored, values, np.nan)

    p_alive = bgnbd.p_alive(pb, x, t_x, T)
    orders_90 = bgnbd.expected_transactions(pb, 90 / DAYS_PER_WEEK, x, t_x, T)
    orders_365 = bgnbd.expected_transactions(pb, 365 / DAYS_PER_WEEK, x, t_x, T)
    no_order = bgnbd.prob_no_transaction(pb, config.churn_horizon_days / DAYS_PER_WEEK, x, t_x, T)
    spend = gammagamma.expected_spend(pg, x, summary.mean_spend)
    clv = gammagamma.clv(pb, spend, x, t_x, T, months=config.clv_months,
                         discount_rate_monthly=config.clv_discount_rate_monthly)
    wait_days = np.rint(bgnbd.median_weeks_to_next_transaction(pb, x, T) * DAYS_PER_WEEK)
    as_of_day = np.datetime64(summary.as_of, "D")
    # Waits beyond ~27,000 years do not fit datetime64[D]; such a date means "never" and is left NaT.
    finite_wait = np.isfinite(wait_days) & (wait_days < 1e7)
    next_at = np.where(scored & finite_wait, as_of_day + np.where(finite_wait, wait_days, 0).astype("timedelta64[D]"),
                       np.datetime64("NaT", "D"))

    clv = masked(clv)
    scored_clv = clv[scored & np.isfinite(clv)]
    if scored_clv.size:
        edges = tuple(float(v) for v in np.quantile(scored_clv, config.spend_tier_quantiles))
    else:
        edges = (np.inf, np.inf)
    tier = _bin(np.nan_to_num(clv, nan=-np.inf), edges, scored & np.isfinite(clv), high_edge_inclusive=True)
    risk = _bin(no_order, config.churn_thresholds, scored, high_edge_inclusive=False)
    return Scores(
        as_of=summary.as_of,
        customer_ids=summary.customer_ids,
        scored=scored,
        p_alive=masked(p_alive),
        expected_orders_90d=masked(orders_90),
        expected_orders_365d=masked(orders_365),
        prob_no_order_churn_horizon=masked(no_order),
        expected_spend=masked(spend),
        predicted_clv=clv,
        expected_next_order_at=next_at,
        churn_risk_code=risk,
        spend_tier_code=tier,
    )
