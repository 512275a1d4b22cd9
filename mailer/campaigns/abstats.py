"""A/B statistics: is one variant's rate (or revenue per recipient) really better than the others'?

Pure functions of counts, no database:

* **Rates** (human open rate, click rate): the two-proportion z-test.  The test statistic
  uses the pooled proportion (the null hypothesis says both rates are equal); the interval
  of the difference uses the unpooled standard error (Wald), so it describes the observed
  difference rather than the null.
* **Revenue per recipient**: Welch's t-test on the per-recipient revenue of two variants
  (most recipients bought nothing and count as 0), from each variant's count, sum and sum
  of squares; Welch-Satterthwaite degrees of freedom, Student's t for the p-value and the
  interval.  Welch rather than a bootstrap: it needs three numbers per variant instead of
  every recipient's revenue, is exact enough at the sample sizes a test share has (the
  means are close to normal by the central limit theorem), and gives the same answer twice.

With more than two variants (A/B/n) the best one (highest observed rate or mean) is
compared with each of the others, and it wins only if every comparison is significant
at ``1 - (1 - confidence) / (n - 1)`` (Bonferroni: n-1 comparisons at once keep the
overall error rate at most ``1 - confidence``).  The interval reported is the difference
between the best and the runner-up at that level.  Otherwise there is no winner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

#: The normal distribution the z-test reads its p-values and quantiles from.
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b``: the difference, its interval at ``level``, the two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    level: float

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - self.level


@dataclass(frozen=True)
class Arm:
    """One variant's figures: recipients (mails sent) and successes (opens, clicks), or for
    revenue the sum and the sum of squares of revenue per recipient."""

    label: str
    n: int
    successes: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def value(self, metric: str) -> float:
        """The rate (successes per recipient) or, for revenue, the mean revenue per recipient."""
        if not self.n:
            return 0.0
        return self.total / self.n if metric == "revenue" else self.successes / self.n


def two_proportions(x1: int, n1: int, x2: int, n2: int, *, level: float) -> Comparison:
    """Two-proportion z-test of x1/n1 against x2/n2 (two-sided) and the Wald interval of the difference."""
    if n1 <= 0 or n2 <= 0:
        return Comparison(0.0, -math.inf, math.inf, 1.0, level)
    p1, p2 = x1 / n1, x2 / n2
    diff = p1 - p2
    pooled = (x1 + x2) / (n1 + n2)
    se_null = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    # Both rates 0 or both 1 (se_null == 0): no evidence of any difference.
    p_value = (1.0 if diff == 0 else 0.0) if se_null == 0 else 2 * (1 - _NORMAL.cdf(abs(diff) / se_null))
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    half = _NORMAL.inv_cdf(1 - (1 - level) / 2) * se
    return Comparison(diff, diff - half, diff + half, min(1.0, max(0.0, p_value)), level)


def welch(a: Arm, b: Arm, *, level: float) -> Comparison:
    """Welch's t-test of a's mean revenue per recipient against b's, from counts and sums."""
    if a.n < 2 or b.n < 2:
        return Comparison(a.value("revenue") - b.value("revenue"), -math.inf, math.inf, 1.0, level)
    mean_a, mean_b = a.total / a.n, b.total / b.n
    var_a = max(0.0, (a.total_sq - a.n * mean_a ** 2) / (a.n - 1))
    var_b = max(0.0, (b.total_sq - b.n * mean_b ** 2) / (b.n - 1))
    diff = mean_a - mean_b
    va, vb = var_a / a.n, var_b / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Comparison(diff, diff, diff, 1.0 if diff == 0 else 0.0, level)
    df = (va + vb) ** 2 / ((va ** 2 / (a.n - 1) if va else 0.0) + (vb ** 2 / (b.n - 1) if vb else 0.0))
    # Student's t from scipy.special (stdtr: CDF, stdtrit: its inverse); scipy.stats costs
    # seconds of import time in every CLI call for these two functions. Imported here, not
    # with the module: every worker process imports this one, and SciPy is ~25 MB of RSS
    # that only a revenue A/B decision needs (docs/benchmarks.md, "Worker memory").
    from scipy.special import stdtr, stdtrit

    p_value = float(2 * stdtr(df, -abs(diff) / se))
    half = float(stdtrit(df, 1 - (1 - level) / 2)) * se
    return Comparison(diff, diff - half, diff + half, min(1.0, max(0.0, p_value)), level)


@dataclass(frozen=True)
class Decision:
    """The outcome: ``winner`` (a label) or None for no winner; the best against the runner-up."""

    winner: str | None
    best: str
    runner_up: str
    comparison: Comparison
    metric: str

    def as_dict(self) -> dict:
        c = self.comparison
        return {"winner": self.winner, "no_winner": self.winner is None, "best": self.best,
                "runner_up": self.runner_up, "metric": self.metric, "difference": c.difference,
                "interval": [c.low if math.isfinite(c.low) else None, c.high if math.isfinite(c.high) else None],
                "p_value": c.p_value, "level": c.level}


def compare(a: Arm, b: Arm, metric: str, *, level: float) -> Comparison:
    if metric == "revenue":
        return welch(a, b, level=level)
    return two_proportions(a.successes, a.n, b.successes, b.n, level=level)


def decide(arms: list[Arm], metric: str, *, confidence: float) -> Decision:
    """Pick the winner among 2-4 arms, or none when the best is not significantly better than every other.

    Ties on the observed value go to the earlier arm (the default comes first).
    """
    if len(arms) < 2:
        raise ValueError("an A/B test compares at least two variants")
    level = 1 - (1 - confidence) / (len(arms) - 1)
    order = sorted(range(len(arms)), key=lambda i: (-arms[i].value(metric), i))
    best = arms[order[0]]
    comparisons = {arms[i].label: compare(best, arms[i], metric, level=level) for i in order[1:]}
    runner_up = arms[order[1]]
    wins = all(c.significant and c.difference > 0 for c in comparisons.values())
    return Decision(winner=best.label if wins else None, best=best.label, runner_up=runner_up.label,
                    comparison=comparisons[runner_up.label], metric=metric)
