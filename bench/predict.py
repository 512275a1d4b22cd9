"""Prediction models at shop scale: 1,000,000 customers, ~5,000,000 orders, fit and score.

Usage: ``python bench/predict.py [--customers N] [--seed S] [--quick]``.

Generates orders from a known BG/NBD process (rates ~ Gamma(r, alpha), dropout after each
repeat purchase with p ~ Beta(a, b), first orders spread over the two years before the
as-of day) with Gamma-Gamma order amounts, all vectorized and seeded.  Then, timed, the
product's path: :func:`mailer.predictions.summary.build_summary` (orders to RFM),
:func:`mailer.predictions.scores.fit` (both models) and :func:`~mailer.predictions.scores.score`.
Prints the time of each step, the peak memory of the whole process (``ru_maxrss``, which
includes the generated orders) and the peak traced by ``tracemalloc`` during the timed
steps, and the recovered parameters next to the true ones.

Loading the orders from SQLite/PostgreSQL is not measured here: the orders table comes in
a later change.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailer.predictions import bgnbd, scores  # noqa: E402
from mailer.predictions.summary import build_summary  # noqa: E402

TRUE_BGNBD = {"r": 1.0, "alpha": 8.0, "a": 0.6, "b": 5.0}
TRUE_GAMMA_GAMMA = {"p": 6.0, "q": 4.0, "gamma": 15.0}
HISTORY_DAYS = 728  # first orders fall uniformly in the 104 weeks before as-of
AS_OF = dt.date(2026, 11, 30)


def simulate(n: int, seed: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple]:
    """Orders (customer id, placed_at datetime64[s], amount) of ``n`` customers from the true process,
    and the exact continuous-time (x, t_x, T) they were generated from."""
    rng = np.random.default_rng(seed)
    r, alpha, a, b = (TRUE_BGNBD[k] for k in ("r", "alpha", "a", "b"))
    lam = rng.gamma(r, 1.0 / alpha, n)  # purchases per week while active
    drop = rng.beta(a, b, n)
    age_s = rng.integers(0, HISTORY_DAYS + 1, n) * 86400 + rng.integers(0, 86400, n)  # first order to as-of end
    T = age_s / (7 * 86400)
    arrivals = rng.poisson(lam * T)  # purchases an immortal customer would make in (0, T]
    lifetime = rng.geometric(drop)  # repeat purchases before dropping out
    x = np.minimum(arrivals, lifetime)
    # The x-th of `arrivals` uniform arrival times on (0, T] is T * Beta(x, arrivals - x + 1);
    # the x - 1 before it are uniform on (0, t_x).
    t_x = np.zeros(n)
    rep = x > 0
    t_x[rep] = T[rep] * rng.beta(x[rep], arrivals[rep] - x[rep] + 1)
    del lam, drop, arrivals, lifetime
    owner = np.repeat(np.arange(n), x)
    offset = rng.random(owner.shape[0]) * t_x[owner]
    last = np.cumsum(x)[rep] - 1  # one repeat purchase per buyer is exactly at t_x
    offset[last] = t_x[rep]
    end = np.datetime64(AS_OF, "s") + np.timedelta64(86399, "s")
    first_at = end - age_s.astype("timedelta64[s]")
    ids = np.concatenate([np.arange(n), owner])
    at = np.concatenate([first_at, first_at[owner] + (offset * 7 * 86400).astype("timedelta64[s]")])
    del owner, offset
    g, p, q = TRUE_GAMMA_GAMMA["gamma"], TRUE_GAMMA_GAMMA["p"], TRUE_GAMMA_GAMMA["q"]
    nu = rng.gamma(q, 1.0 / g, n)
    amounts = rng.gamma(p, 1.0 / nu[ids])
    return (ids, at, np.round(amounts, 2)), (x, t_x, T)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--quick", action="store_true", help="100,000 customers")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.customers
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}, numpy {np.__version__}, load {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    (ids, at, amounts), exact = simulate(n, args.seed)
    print(f"generated {n:,} customers, {ids.shape[0]:,} orders in {time.perf_counter() - t0:.1f} s "
          f"(process peak so far {_rss_mb():.0f} MB)")

    tracemalloc.start()
    t0 = time.perf_counter()
    summary = build_summary(ids, at, amounts, AS_OF)
    t1 = time.perf_counter()
    models = scores.fit(summary)
    t2 = time.perf_counter()
    result = scores.score(summary, models)
    t3 = time.perf_counter()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print(f"summary: {len(summary):,} customers, {summary.repeat_transactions:,} repeat transactions "
          f"(same-day orders merged), {t1 - t0:.1f} s")
    print(f"fit (BG/NBD + Gamma-Gamma): {t2 - t1:.1f} s; score: {t3 - t2:.1f} s; "
          f"summary + fit + score: {t3 - t0:.1f} s")
    print(f"peak memory: {traced_peak / 2**20:.0f} MB traced during the timed steps, "
          f"{_rss_mb():.0f} MB process peak (ru_maxrss, includes the generated orders)")
    del ids, at, amounts
    continuous = bgnbd.fit(*exact).to_dict()  # not timed: separates the fit from the daily rounding
    print("parameter   true   recovered from the orders   from the exact continuous (x, t_x, T)")
    fitted = models.to_dict()
    for k, v in TRUE_BGNBD.items():
        print(f"  {k:<8} {v:7.3f}  {fitted['bgnbd'][k]:8.3f}                   {continuous[k]:8.3f}")
    for k, v in TRUE_GAMMA_GAMMA.items():
        print(f"  {k:<8} {v:7.3f}  {fitted['gamma_gamma'][k]:8.3f}")
    print(f"log-likelihood {models.bgnbd.log_likelihood:,.1f}; converged: BG/NBD {models.bgnbd.converged}, "
          f"Gamma-Gamma {models.gamma_gamma.converged}")
    counts = np.bincount(result.churn_risk_code + 1, minlength=4)
    print(f"scored {int(result.scored.sum()):,}; churn risk low/medium/high/not scored: "
          f"{counts[1]:,}/{counts[2]:,}/{counts[3]:,}/{counts[0]:,}; "
          f"mean predicted CLV {np.nanmean(result.predicted_clv):.2f}")


if __name__ == "__main__":
    main()
