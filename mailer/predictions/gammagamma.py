"""The Gamma-Gamma spend-per-order model (Fader & Hardie 2013): likelihood, fit, expected spend, CLV.

Owns "how much does an order of this customer bring": a customer's order amounts are
Gamma(p, nu) with mean p/nu, and nu varies across customers as Gamma(q, gamma).  The
model is fitted on each repeat buyer's ``(x, mean_spend)`` (x >= 1 repeat transactions and
their mean amount, as in the note: the first purchase is left out), and gives

* :func:`expected_spend`: E[amount of an order | x, mean_spend], a weighted average of the
  population mean p*gamma/(q-1) and the customer's own mean (eq. 5 of the note); customers
  without repeat purchases get the population mean;
* :func:`clv`: the discounted value of the expected orders over a horizon of months, using
  the BG/NBD expected transactions of :mod:`mailer.predictions.bgnbd`.

Pure numpy/scipy, no database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln, psi

from mailer.predictions import bgnbd

LOG_PARAM_BOUND = 15.0  # parameters are searched in [e^-15, e^15]
DAYS_PER_MONTH = 365.25 / 12  # CLV months: 30.4375 days
DAYS_PER_WEEK = 7


class SpendInputError(ValueError):
    """The ``(x, mean_spend)`` arrays cannot be used; the message names the customer index."""


@dataclass(frozen=True)
class GammaGammaParams:
    """Fitted Gamma-Gamma parameters (shape p of an order amount; nu ~ Gamma(q, gamma))."""

    p: float
    q: float
    gamma: float
    log_likelihood: float = float("nan")
    customers: int = 0
    converged: bool = True

    @property
    def population_mean_spend(self) -> float:
        """E[amount of an order] over all customers, p*gamma/(q-1); infinite when q <= 1."""
        return self.p * self.gamma / (self.q - 1.0) if self.q > 1.0 else float("inf")

    def to_dict(self) -> dict:
        return asdict(self)


def _unpack(params) -> tuple[float, float, float]:
    if isinstance(params, GammaGammaParams):
        return params.p, params.q, params.gamma
    p, q, g = (float(v) for v in params)
    return p, q, g


def _repeat_buyers(x, mean_spend) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    m = np.asarray(mean_spend, dtype=np.float64).ravel()
    if x.shape != m.shape:
        raise SpendInputError(f"x and mean_spend differ in length ({x.shape[0]} and {m.shape[0]})")
    use = x >= 1
    bad = use & (~np.isfinite(m) | (m <= 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise SpendInputError(f"customer {i}: mean_spend {m[i]!r} must be a number > 0 when x >= 1")
    return x[use], m[use]


def log_likelihood(params, x, mean_spend) -> np.ndarray:
    """Log density of each repeat buyer's mean spend given x (customers with x >= 1 only)."""
    p, q, g = _unpack(params)
    x, m = _repeat_buyers(x, mean_spend)
    px = p * x
    return (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(g) + (px - 1.0) * np.log(m)
            + px * np.log(x) - (px + q) * np.log(g + m * x))


def _negative_mean_ll_and_grad(theta, x, m, w, total_w):
    p, q, g = np.exp(theta)
    px = p * x
    log_x = np.log(x)
    log_m = np.log(m)
    log_gmx = np.log(g + m * x)
    ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(g) + (px - 1.0) * log_m + px * log_x
          - (px + q) * log_gmx)
    psi_pxq = psi(px + q)
    d_p = x * (psi_pxq - psi(px) + log_m + log_x - log_gmx)
    d_q = psi_pxq - psi(q) + np.log(g) - log_gmx
    d_g = q / g - (px + q) / (g + m * x)
    value = -float(w @ ll) / total_w
    grad = -np.array([float(w @ d_p) * p, float(w @ d_q) * q, float(w @ d_g) * g]) / total_w
    if not np.isfinite(value):
        return 1e300, np.zeros(3)
    return value, grad


def fit(x, mean_spend, *, max_iterations: int = 1000) -> GammaGammaParams:
    """Maximum-likelihood Gamma-Gamma parameters from the repeat buyers among ``(x, mean_spend)``.

    Customers with x == 0 are ignored (their mean spend is undefined).  L-BFGS-B over the
    log-parameters with the analytic gradient; identical ``(x, mean_spend)`` rows are pooled.
    """
    x, m = _repeat_buyers(x, mean_spend)
    if x.shape[0] == 0:
        raise SpendInputError("no customer with a repeat purchase: the spend model cannot be fitted")
    rows, inverse = np.unique(np.stack([x, m], axis=1), axis=0, return_inverse=True)
    w = np.bincount(inverse.ravel(), minlength=rows.shape[0]).astype(np.float64)
    xu, mu = rows[:, 0].copy(), rows[:, 1].copy()
    total_w = float(w.sum())
    # Start: p = 1, q = 2 and gamma so that the population mean p*gamma/(q-1) is the mean spend.
    start = np.log([1.0, 2.0, float(w @ mu) / total_w])
    result = minimize(_negative_mean_ll_and_grad, start, args=(xu, mu, w, total_w), jac=True, method="L-BFGS-B",
                      bounds=[(-LOG_PARAM_BOUND, LOG_PARAM_BOUND)] * 3,
                      options={"maxiter": max_iterations, "ftol": 1e-15, "gtol": 1e-10})
    p, q, g = (float(v) for v in np.exp(result.x))
    return GammaGammaParams(p=p, q=q, gamma=g, log_likelihood=float(-result.fun * total_w),
                            customers=int(total_w), converged=bool(result.success))


def expected_spend(params, x, mean_spend) -> np.ndarray:
    """E[amount of a future order | x, mean_spend] (the note's eq. 5).

    (q-1)/(px+q-1) * p*gamma/(q-1) + px/(px+q-1) * mean_spend, i.e. p*(gamma + x*mean_spend)/(px+q-1);
    for x == 0 the population mean p*gamma/(q-1).  NaN where that is infinite (q <= 1).
    """
    p, q, g = _unpack(params)
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(mean_spend, dtype=np.float64)
    m = np.where(x > 0, m, 0.0)
    denominator = p * x + q - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        value = p * (g + x * m) / denominator
    return np.where(denominator > 0, value, np.nan)


def clv(bgnbd_params, spend, x, t_x, T, *, months: int = 12, discount_rate_monthly: float = 0.01) -> np.ndarray:
    """Discounted expected revenue over the next ``months`` months.

    CLV = sum over m = 1..months of (E[Y(m)] - E[Y(m-1)]) * spend / (1 + d)^m, where E[Y(m)]
    is the BG/NBD expected number of transactions in the m months after T (a month is
    365.25/12 days), ``spend`` the expected amount per order and d the monthly discount rate.
    """
    if not 0 < months <= 120:
        raise ValueError(f"months must be between 1 and 120, got {months}")
    if not (np.isfinite(discount_rate_monthly) and 0 <= discount_rate_monthly < 1):
        raise ValueError(f"discount_rate_monthly must be in [0, 1), got {discount_rate_monthly}")
    weeks_per_month = DAYS_PER_MONTH / DAYS_PER_WEEK
    total = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(T)))
    previous = np.zeros_like(total)
    for month in range(1, months + 1):
        current = bgnbd.expected_transactions(bgnbd_params, month * weeks_per_month, x, t_x, T)
        total += (current - previous) / (1.0 + discount_rate_monthly) ** month
        previous = current
    return total * np.asarray(spend, dtype=np.float64)
