"""The prediction models (mailer.predictions): the papers' CDNOW estimates, properties, recovery, rules.

No database is involved: these are the pure model functions the later CLI wraps.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.predictions import bgnbd, gammagamma, scores
from mailer.predictions.summary import OrderDataError, build_summary

_HERE = Path(__file__).resolve()
CDNOW_DIR = next((p for p in (_HERE.parents[1].parent / "shared" / "datasets" / "cdnow",
                              _HERE.parents[1].parent.parent / "shared" / "datasets" / "cdnow")
                  if (p / "CDNOW_sample.txt").is_file()), None)
CALIBRATION_END = dt.date(1997, 9, 30)


def _close(value: float, published: float, rel: float = 0.01) -> bool:
    return abs(value - published) <= rel * abs(published)


@pytest.fixture(scope="module")
def cdnow():
    if CDNOW_DIR is None:
        pytest.skip("../shared/datasets/cdnow/CDNOW_sample.txt is absent")
    rows = [line.split() for line in (CDNOW_DIR / "CDNOW_sample.txt").read_text().splitlines() if line.strip()]
    ids = np.array([int(r[1]) for r in rows])
    days = np.array([f"{r[2][:4]}-{r[2][4:6]}-{r[2][6:]}" for r in rows], dtype="datetime64[D]")
    amounts = np.array([float(r[4]) for r in rows])
    return build_summary(ids, days, amounts, CALIBRATION_END)


# --- CDNOW: the published estimates -------------------------------------------------------


def test_cdnow_summary_matches_the_papers_setup(cdnow):
    """Given the CDNOW sample, when summarised as of 1997-09-30, then the README's counts hold."""
    assert len(cdnow) == 2357
    assert cdnow.repeat_transactions == 2457
    assert int(np.count_nonzero(cdnow.x > 0)) == 946
    assert float(cdnow.T_weeks.max()) <= 39.0


def test_cdnow_bgnbd_reproduces_the_published_estimates(cdnow):
    """Given the calibration summary, when BG/NBD is fitted, then r, alpha, a, b are within 1% of the paper."""
    fitted = bgnbd.fit(cdnow.x, cdnow.t_x_weeks, cdnow.T_weeks)
    published = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    for name, value in published.items():
        assert _close(getattr(fitted, name), value), (name, getattr(fitted, name), value)
    assert fitted.log_likelihood == pytest.approx(-9582.4, abs=0.1)
    assert fitted.converged and fitted.customers == 2357


def test_cdnow_gamma_gamma_reproduces_the_published_estimates(cdnow):
    """Given the 946 repeat buyers' mean spend, when Gamma-Gamma is fitted, then p, q, gamma are within 1%."""
    fitted = gammagamma.fit(cdnow.x, cdnow.mean_spend)
    assert fitted.customers == 946
    for name, value in {"p": 6.25, "q": 3.74, "gamma": 15.44}.items():
        assert _close(getattr(fitted, name), value), (name, getattr(fitted, name), value)


def test_cdnow_fit_and_score_through_the_product_path(cdnow):
    """Given the calibration summary, when fit and score run, then the JSON shape holds and every customer is scored."""
    models = scores.fit(cdnow)
    out = models.to_dict()
    assert out["as_of"] == "1997-09-30" and out["customers"] == 2357
    assert set(out["bgnbd"]) == {"r", "alpha", "a", "b", "log_likelihood"}
    assert set(out["gamma_gamma"]) == {"p", "q", "gamma", "customers"}
    result = scores.score(cdnow, models)
    assert result.scored.all()  # every CDNOW customer's first order is >= 26 weeks before as-of
    assert np.all(np.isfinite(result.predicted_clv)) and np.all(result.predicted_clv > 0)
    assert set(np.unique(result.churn_risk_code)) <= {0, 1, 2}
    # The tiers split at the 50% and 80% quantiles of predicted CLV.
    assert np.mean(result.spend_tier_code == 2) == pytest.approx(0.2, abs=0.01)


# --- Properties ----------------------------------------------------------------------------

params_st = st.tuples(
    st.floats(0.05, 5.0), st.floats(0.1, 50.0), st.floats(0.05, 5.0), st.floats(0.5, 10.0),
)


@st.composite
def customers(draw):
    T = draw(st.floats(0.0, 200.0))
    x = draw(st.integers(0, 200))
    t_x = 0.0 if x == 0 else draw(st.floats(0.0, 1.0)) * T
    return x, t_x, T


@settings(max_examples=300, deadline=None)
@given(params_st, customers(), st.floats(0.0, 104.0))
def test_probabilities_stay_in_the_unit_interval(params, customer, t):
    """Given any parameters and customer, then p_alive and P(no order in t) are in [0, 1]
    and P(no order) is at least P(left), and E[orders] is at least P(at least one order)."""
    x, t_x, T = customer
    pa = float(bgnbd.p_alive(params, x, t_x, T))
    none = float(bgnbd.prob_no_transaction(params, t, x, t_x, T))
    expected = float(bgnbd.expected_transactions(params, t, x, t_x, T))
    assert 0.0 <= pa <= 1.0
    assert 0.0 <= none <= 1.0
    assert none >= (1.0 - pa) - 1e-12
    assert np.isfinite(expected) and expected >= (1.0 - none) - 1e-9 * max(1.0, expected)


@settings(max_examples=200, deadline=None)
@given(params_st, st.integers(1, 150), st.floats(0.5, 200.0), st.floats(0.5, 104.0))
def test_expected_orders_rise_with_frequency_at_fixed_recency(params, x, T, t):
    """Given a customer who bought on the as-of day (t_x = T), when x grows by one, then expected orders rise.

    (At low recency BG/NBD is deliberately not monotone, see the next test.)
    """
    low = float(bgnbd.expected_transactions(params, t, x, T, T))
    high = float(bgnbd.expected_transactions(params, t, x + 1, T, T))
    assert high >= low * (1 - 1e-9)


def test_frequent_buyers_who_went_quiet_are_expected_to_buy_less():
    """Given the CDNOW parameters and a customer last seen 30 weeks ago, when their past frequency is
    higher, then the model expects fewer orders (a frequent buyer's silence says they left: paper, fig. 4)."""
    params = (0.243, 4.414, 0.793, 2.426)
    few = float(bgnbd.expected_transactions(params, 39, 2, 2.0, 32.0))
    many = float(bgnbd.expected_transactions(params, 39, 10, 2.0, 32.0))
    assert many < few


@settings(max_examples=200, deadline=None)
@given(params_st, st.floats(0.0, 200.0), st.floats(0.1, 104.0))
def test_a_customer_without_repeat_orders_gets_the_models_values(params, T, t):
    """Given x = 0, then every figure is finite, positive where the model says so, and not a crash."""
    pa = float(bgnbd.p_alive(params, 0, 0.0, T))
    expected = float(bgnbd.expected_transactions(params, t, 0, 0.0, T))
    none = float(bgnbd.prob_no_transaction(params, t, 0, 0.0, T))
    wait = float(bgnbd.median_weeks_to_next_transaction(params, 0, T))
    assert pa == 1.0  # BG/NBD: dropout happens only right after a repeat purchase
    assert np.isfinite(expected) and expected > 0
    assert 0.0 < none < 1.0
    assert np.isfinite(wait) and wait > 0
    spend = float(gammagamma.expected_spend((6.25, 3.74, 15.44), 0, np.nan))
    assert spend == pytest.approx(6.25 * 15.44 / 2.74)


def test_expected_transactions_match_the_direct_formula():
    """Given a heavy buyer and a light one, then the Euler-transformed eq. 10 equals the paper's form
    (evaluated in 50-digit arithmetic)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    r, alpha, a, b = 0.243, 4.414, 0.793, 2.426
    for x, t_x, T, t in ((0, 0.0, 30.0, 39.0), (3, 20.0, 35.0, 39.0), (120, 80.0, 90.0, 52.0)):
        R, A, B, X, TX, TT, H = (mpmath.mpf(v) for v in (r, alpha, b, x, t_x, T, t))
        aa = mpmath.mpf(a)
        z = H / (A + TT + H)
        num = (aa + B + X - 1) / (aa - 1) * (1 - ((A + TT) / (A + TT + H)) ** (R + X)
                                              * mpmath.hyp2f1(R + X, B + X, aa + B + X - 1, z))
        den = 1 + (aa / (B + X - 1) * ((A + TT) / (A + TX)) ** (R + X) if x > 0 else 0)
        assert float(bgnbd.expected_transactions((r, alpha, a, b), t, x, t_x, T)) == pytest.approx(
            float(num / den), rel=1e-10)


# --- Recovery on simulated data ---------------------------------------------------------------


def _simulate(n: int, true: tuple[float, float, float, float], seed: int):
    """(x, t_x, T) of n customers from the BG/NBD process in continuous time, T uniform in [13, 78] weeks."""
    rng = np.random.default_rng(seed)
    r, alpha, a, b = true
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    T = rng.uniform(13.0, 78.0, n)
    arrivals = rng.poisson(lam * T)
    x = np.minimum(arrivals, rng.geometric(p))
    t_x = np.zeros(n)
    rep = x > 0
    t_x[rep] = T[rep] * rng.beta(x[rep], arrivals[rep] - x[rep] + 1)
    return x, t_x, T


def test_fit_recovers_the_parameters_of_simulated_customers():
    """Given 20,000 customers simulated from known parameters (seeded), when fitted, then each parameter
    is recovered within 15% and the fit's likelihood is at least the true parameters' likelihood."""
    true = (0.8, 6.0, 0.7, 3.0)
    x, t_x, T = _simulate(20_000, true, seed=7)
    fitted = bgnbd.fit(x, t_x, T)
    for name, value in zip(("r", "alpha", "a", "b"), true, strict=True):
        assert _close(getattr(fitted, name), value, rel=0.15), (name, getattr(fitted, name), value)
    assert fitted.log_likelihood >= bgnbd.log_likelihood(true, x, t_x, T).sum() - 1e-6


# --- The summary --------------------------------------------------------------------------------


def test_summary_merges_same_day_orders_and_ignores_later_ones():
    """Given orders with two on one day and one after as-of, then x, t_x, T and mean spend follow the paper."""
    ids = ["b", "a", "a", "a", "a", "c"]
    at = np.array(["2026-01-10T09:00", "2026-01-01T10:00", "2026-01-01T18:00", "2026-01-15T08:00",
                   "2026-03-01T00:00", "2026-01-29T12:00"], dtype="datetime64[s]")
    amounts = [5.0, 10.0, 20.0, 7.0, 99.0, 1.0]
    s = build_summary(ids, at, amounts, dt.date(2026, 1, 29))
    assert list(s.customer_ids) == ["a", "b", "c"]
    assert list(s.x) == [1, 0, 0]
    assert s.t_x_weeks[0] == pytest.approx(2.0)
    assert list(s.T_weeks) == pytest.approx([4.0, 19 / 7, 0.0])
    assert s.mean_spend[0] == pytest.approx(7.0)  # the repeat purchase only; the merged first day is 30
    assert np.isnan(s.mean_spend[1])


@pytest.mark.parametrize(("amounts", "placed", "message"), [
    ([1.0, float("nan")], ["2026-01-01", "2026-01-02"], "order 1: amount"),
    ([1.0, -3.0], ["2026-01-01", "2026-01-02"], "order 1: amount"),
    ([1.0, 2.0], ["2026-01-01", "NaT"], "order 1: placed_at is missing"),
    ([1.0], ["2026-01-01", "2026-01-02"], "amounts: expected 2 values"),
])
def test_bad_orders_are_named(amounts, placed, message):
    """Given a bad order, then OrderDataError names it (position and field) and nothing is built."""
    with pytest.raises(OrderDataError, match=message):
        build_summary([1, 2], np.array(placed, dtype="datetime64[D]"), amounts, dt.date(2026, 2, 1))


# --- The minimum history and the scores ----------------------------------------------------------


def test_too_little_history_is_reported_not_scored():
    """Given 3 customers over 10 days, when fitted, then NotEnoughHistory names each unmet requirement."""
    s = build_summary([1, 1, 2, 3], np.array(["2026-01-01", "2026-01-05", "2026-01-02", "2026-01-03"],
                                             dtype="datetime64[D]"), [1, 2, 3, 4], dt.date(2026, 1, 10))
    with pytest.raises(scores.NotEnoughHistory) as err:
        scores.fit(s)
    assert len(err.value.reasons) == 3
    assert "3 customers with an order, at least 500" in str(err.value)


def test_new_customers_are_not_scored(cdnow):
    """Given the CDNOW models and a rule needing 30 weeks of age, then younger customers get no figures."""
    models = scores.fit(cdnow)
    config = scores.ScoreConfig(history=scores.HistoryRule(min_customer_age_days=30 * 7))
    result = scores.score(cdnow, models, config)
    young = cdnow.T_weeks * 7 < 30 * 7
    assert young.any() and (~young).any()
    assert not result.scored[young].any()
    assert np.isnan(result.predicted_clv[young]).all() and np.isnat(result.expected_next_order_at[young]).all()
    assert (result.churn_risk_code[young] == scores.NOT_SCORED).all()
    assert result.churn_risk(int(np.argmax(young))) is None
    assert np.isfinite(result.predicted_clv[~young]).all()


def test_churn_risk_bins_at_33_and_66_percent():
    """Given P(no order) values on and around the edges, then low < 0.33 <= medium <= 0.66 < high."""
    values = np.array([0.1, 0.33, 0.5, 0.66, 0.661])
    codes = scores._bin(values, (0.33, 0.66), np.ones(5, dtype=bool), high_edge_inclusive=False)
    assert [scores.CHURN_RISK_LABELS[c] for c in codes] == ["low", "medium", "medium", "medium", "high"]


def test_clv_is_the_discounted_sum_of_monthly_expected_orders(cdnow):
    """Given one customer, then CLV equals sum_m (E[Y(m)] - E[Y(m-1)]) * spend / (1+d)^m computed by hand."""
    params = (0.243, 4.414, 0.793, 2.426)
    x, t_x, T = 3, 20.0, 35.0
    month = 365.25 / 12 / 7
    by_hand = sum(
        (float(bgnbd.expected_transactions(params, m * month, x, t_x, T))
         - float(bgnbd.expected_transactions(params, (m - 1) * month, x, t_x, T))) * 40.0 / 1.02 ** m
        for m in range(1, 13))
    assert float(gammagamma.clv(params, 40.0, x, t_x, T, discount_rate_monthly=0.02)) == pytest.approx(by_hand)
