"""The BG/NBD repeat-purchase model (Fader, Hardie & Lee 2005): likelihood, fit, predictions.

Owns the maths of "how many more orders, and is this customer still around": the
log-likelihood of a customer's ``(x, t_x, T)`` (repeat transactions, recency and age in
weeks), its maximum-likelihood fit over a population, and the per-customer quantities
derived from the fitted parameters ``r, alpha, a, b``:

* :func:`p_alive`: P(the customer is still active at ``T``), eq. 11 of the paper;
* :func:`expected_transactions`: E[transactions in (T, T+t] | x, t_x, T], eq. 10;
* :func:`prob_no_transaction`: P(no transaction in (T, T+t] | x, t_x, T);
* :func:`median_weeks_to_next_transaction`: the median wait for the next transaction of
  a customer who is still active (the ``expected_next_order_at`` figure);
* :func:`expected_transactions_new_customer`: E[X(t)] for a customer just acquired, eq. 7.

Pure numpy/scipy, no database; every function is vectorized over customers.  Time is in
weeks throughout (see :mod:`mailer.predictions.summary`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, expit, gammaln, hyp2f1, psi

LOG_PARAM_BOUND = 15.0  # parameters are searched in [e^-15, e^15]
_A_NEAR_ONE = 1e-7  # eq. 10 is 0/0 at a == 1; a is moved this far off (relative error ~1e-9)
_C_NEAR_ZERO = 1e-9  # and 0 * inf at a + b + x - 1 == 0; c is moved this far off


class ModelInputError(ValueError):
    """The ``(x, t_x, T)`` arrays are not a valid summary; the message names the customer index."""


@dataclass(frozen=True)
class BGNBDParams:
    """Fitted BG/NBD parameters: purchase rates ~ Gamma(r, alpha), dropout p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")  # total over the customers fitted
    customers: int = 0
    converged: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _check(x, t_x, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    t_x = np.asarray(t_x, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    x, t_x, T = np.broadcast_arrays(x, t_x, T)
    problems = (
        (~np.isfinite(x) | (x < 0) | (x != np.floor(x)), "x must be a whole number >= 0"),
        (~np.isfinite(T) | (T < 0), "T must be a finite number of weeks >= 0"),
        (~np.isfinite(t_x) | (t_x < 0) | (t_x > T), "t_x must be between 0 and T"),
        ((x == 0) & (t_x != 0), "t_x must be 0 when x is 0"),
    )
    for bad, what in problems:
        if bad.any():
            i = int(np.argmax(bad.ravel()))
            raise ModelInputError(f"customer {i}: {what} (x={x.ravel()[i]!r}, t_x={t_x.ravel()[i]!r}, "
                                  f"T={T.ravel()[i]!r})")
    return x, t_x, T


def _log_terms(r, alpha, a, b, x, t_x, T):
    """log of the two likelihood terms (A3, A4 of the paper's eq. 6), A4 = -inf where x == 0."""
    rx = r + x
    log_a3 = -rx * np.log(alpha + T)
    repeat = x > 0
    bx1 = np.where(repeat, b + x - 1.0, 1.0)
    log_a4 = np.where(repeat, np.log(a) - np.log(bx1) - rx * np.log(alpha + t_x), -np.inf)
    return log_a3, log_a4


def log_likelihood(params: BGNBDParams | tuple, x, t_x, T) -> np.ndarray:
    """Each customer's log-likelihood under ``params`` (eq. 6, computed in logs).

    ``gammaln``/``betaln`` for the gamma-function ratios and log-sum-exp for the sum of
    the "still alive" and "dropped out after the last purchase" terms, so nothing
    overflows for large ``x`` or ``T``.
    """
    r, alpha, a, b = _unpack(params)
    x, t_x, T = _check(x, t_x, T)
    log_a3, log_a4 = _log_terms(r, alpha, a, b, x, t_x, T)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    return a1 + a2 + np.logaddexp(log_a3, log_a4)


def _unpack(params) -> tuple[float, float, float, float]:
    if isinstance(params, BGNBDParams):
        return params.r, params.alpha, params.a, params.b
    r, alpha, a, b = (float(v) for v in params)
    return r, alpha, a, b


def _negative_mean_ll_and_grad(theta, ux, wx, x, t_x, T, w, total_w):
    """Mean negative log-likelihood over the (weighted) customers and its gradient in log-parameters.

    Terms that depend on x alone (the gamma-function ratios) are evaluated once per distinct
    x (``ux`` with total weights ``wx``); the rest once per distinct (x, t_x, T).
    """
    r, alpha, a, b = np.exp(theta)
    # x-only part: gammaln(r+x) - gammaln(r) + r log alpha + betaln(a, b+x) - betaln(a, b)
    ll_x = gammaln(r + ux) - gammaln(r) + betaln(a, b + ux) - betaln(a, b)
    d_r = psi(r + ux) - psi(r)
    d_a = psi(a + b) - psi(a + b + ux)
    d_b = psi(a + b) + psi(b + ux) - psi(b) - psi(a + b + ux)
    ll = float(wx @ ll_x) + total_w * r * np.log(alpha)
    g_r = float(wx @ d_r) + total_w * np.log(alpha)
    g_alpha = total_w * r / alpha
    g_a = float(wx @ d_a)
    g_b = float(wx @ d_b)

    log_a3, log_a4 = _log_terms(r, alpha, a, b, x, t_x, T)
    log_sum = np.logaddexp(log_a3, log_a4)
    w3 = np.exp(log_a3 - log_sum)
    w4 = 1.0 - w3
    rx = r + x
    lt = np.log(alpha + T)
    ltx = np.log(alpha + t_x)
    repeat = x > 0
    bx1 = np.where(repeat, b + x - 1.0, 1.0)
    ll += float(w @ log_sum)
    g_r += -float(w @ (w3 * lt + w4 * ltx))
    g_alpha += -float(w @ (rx * (w3 / (alpha + T) + w4 / (alpha + t_x))))
    g_a += float(w @ w4) / a
    g_b += -float(w @ np.where(repeat, w4 / bx1, 0.0))

    grad = np.array([g_r * r, g_alpha * alpha, g_a * a, g_b * b])
    value = -ll / total_w
    if not np.isfinite(value):
        return 1e300, np.zeros(4)
    return value, -grad / total_w


def _start(x, T, w) -> np.ndarray:
    """Start values: r = 1 and alpha so that r/alpha is the observed repeat rate; a = 1, b = 3."""
    rate = float(w @ x) / max(float(w @ T), 1e-9)
    alpha0 = 1.0 / max(rate, 1e-6)
    return np.log([1.0, min(alpha0, 1e6), 1.0, 3.0])


def fit(x, t_x, T, *, weights=None, max_iterations: int = 1000) -> BGNBDParams:
    """Maximum-likelihood BG/NBD parameters for the customers ``(x, t_x, T)``.

    L-BFGS-B over the log-parameters with the analytic gradient.  Identical ``(x, t_x, T)``
    rows are pooled with counts first (summaries of large shops repeat them a lot).
    ``weights`` (optional) are per-customer counts.
    """
    x, t_x, T = _check(x, t_x, T)
    x, t_x, T = x.ravel(), t_x.ravel(), T.ravel()
    if x.shape[0] == 0:
        raise ModelInputError("no customers to fit")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != x.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ModelInputError("weights must be finite, >= 0 and one per customer")
    rows, inverse = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_inverse=True)
    w = np.bincount(inverse.ravel(), weights=w, minlength=rows.shape[0])
    del inverse
    ux_all, t_xu, Tu = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy()
    del rows
    ux, ux_inv = np.unique(ux_all, return_inverse=True)
    wx = np.bincount(ux_inv.ravel(), weights=w, minlength=ux.shape[0])
    total_w = float(w.sum())
    if total_w <= 0:
        raise ModelInputError("weights sum to zero")
    if float(w @ ux_all) <= 0:
        raise ModelInputError("no repeat transactions: the model cannot be fitted")

    args = (ux, wx, ux_all, t_xu, Tu, w, total_w)
    bounds = [(-LOG_PARAM_BOUND, LOG_PARAM_BOUND)] * 4
    result = minimize(_negative_mean_ll_and_grad, _start(ux_all, Tu, w), args=args, jac=True, method="L-BFGS-B",
                      bounds=bounds, options={"maxiter": max_iterations, "ftol": 1e-15, "gtol": 1e-10})
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    return BGNBDParams(r=r, alpha=alpha, a=a, b=b, log_likelihood=float(-result.fun * total_w),
                       customers=int(round(total_w)), converged=bool(result.success))


def p_alive(params, x, t_x, T) -> np.ndarray:
    """P(active at T | x, t_x, T) (eq. 11); exactly 1 for x == 0 (dropout follows a repeat purchase)."""
    r, alpha, a, b = _unpack(params)
    x, t_x, T = _check(x, t_x, T)
    repeat = x > 0
    bx1 = np.where(repeat, b + x - 1.0, 1.0)
    log_odds_dead = np.log(a) - np.log(bx1) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    return np.where(repeat, expit(-log_odds_dead), 1.0)


def _away_from_one(a: float) -> float:
    return a if abs(a - 1.0) > _A_NEAR_ONE else 1.0 + _A_NEAR_ONE


def expected_transactions(params, t, x, t_x, T) -> np.ndarray:
    """E[number of transactions in (T, T + t] | x, t_x, T], eq. 10 of the paper.

    The paper's term ((alpha+T)/(alpha+T+t))^(r+x) * 2F1(r+x, b+x; a+b+x-1; z) with
    z = t/(alpha+T+t) is rewritten by Euler's transformation as
    (1-z)^(a-1) * 2F1(a+b-1-r, a-1; a+b+x-1; z): the same value, but its first two
    arguments no longer grow with x, so the series stays well inside floating-point
    range for heavy buyers (the direct form multiplies a huge 2F1 by a tiny power).
    """
    r, alpha, a, b = _unpack(params)
    a = _away_from_one(a)
    x, t_x, T = _check(x, t_x, T)
    t = np.asarray(t, dtype=np.float64)
    if np.any(~np.isfinite(t) | (t < 0)):
        raise ModelInputError("t must be a finite number of weeks >= 0")
    z = t / (alpha + T + t)
    # c = 0 (x = 0 and a + b = 1) is a pole of 2F1 cancelled by the factor c: move c off it.
    c = a + b + x - 1.0
    c = np.where(np.abs(c) < _C_NEAR_ZERO, _C_NEAR_ZERO, c)
    term = np.exp((a - 1.0) * np.log1p(-z)) * hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
    bad = ~np.isfinite(term)
    if np.any(bad):
        # scipy's hyp2f1 can return inf where c - A - B is a whole number (e.g. 2F1(1, 1; 102; 0.9),
        # true value 1.009): moving c by a relative 1e-9 steps off that case (the value moves by
        # about as much); Pfaff's form 2F1(a-1, r+x; c; -t/(alpha+T)) is the last resort.
        shape = term.shape
        zb = np.broadcast_to(z, shape)[bad]
        cb = np.broadcast_to(c, shape)[bad] * (1.0 + 1e-9)
        xb = np.broadcast_to(x, shape)[bad]
        alt = np.exp((a - 1.0) * np.log1p(-zb)) * hyp2f1(a + b - 1.0 - r, a - 1.0, cb, zb)
        still = ~np.isfinite(alt)
        if np.any(still):
            w = -zb[still] / (1.0 - zb[still])
            alt[still] = hyp2f1(a - 1.0, r + xb[still], cb[still], w)
        term = np.array(term, dtype=np.float64, copy=True)
        term[bad] = alt
    given_alive = c / (a - 1.0) * (1.0 - term)
    return np.maximum(given_alive, 0.0) * p_alive((r, alpha, a, b), x, t_x, T)


def prob_no_transaction(params, t, x, t_x, T) -> np.ndarray:
    """P(no transaction in (T, T + t] | x, t_x, T).

    Either the customer has already dropped out (1 - p_alive), or they are active and
    their Poisson process makes no purchase in t weeks.  Given active at T, the rate has
    the posterior Gamma(r + x, alpha + T), and an active customer can only drop out right
    after a purchase, so P(no purchase in t | active) = ((alpha+T)/(alpha+T+t))^(r+x).
    """
    r, alpha, a, b = _unpack(params)
    x, t_x, T = _check(x, t_x, T)
    t = np.asarray(t, dtype=np.float64)
    pa = p_alive((r, alpha, a, b), x, t_x, T)
    none_if_alive = np.exp(-(r + x) * np.log1p(t / (alpha + T)))
    return np.clip((1.0 - pa) + pa * none_if_alive, 0.0, 1.0)


def median_weeks_to_next_transaction(params, x, T) -> np.ndarray:
    """Median wait (weeks after T) for the next transaction of a customer who is still active.

    Given active at T the wait is Lomax: P(wait > s) = ((alpha+T)/(alpha+T+s))^(r+x), whose
    median is (alpha+T) * (2^(1/(r+x)) - 1).  It does not include the chance that the
    customer has left: read it together with :func:`p_alive`.
    """
    r, alpha, _a, _b = _unpack(params)
    x, _t_x, T = _check(x, np.zeros_like(np.asarray(x, dtype=np.float64)), T)
    return (alpha + T) * np.expm1(np.log(2.0) / (r + x))


def expected_transactions_new_customer(params, t) -> np.ndarray:
    """E[X(t)]: expected repeat transactions in the first t weeks of a new customer (eq. 7)."""
    r, alpha, a, b = _unpack(params)
    a = _away_from_one(a)
    t = np.asarray(t, dtype=np.float64)
    z = t / (alpha + t)
    term = np.exp(r * np.log1p(-z)) * hyp2f1(r, b, a + b - 1.0, z)
    return (a + b - 1.0) / (a - 1.0) * (1.0 - term)
