"""The predictions through the product: orders in (import, events), `mailer predict fit/score/show`, the daily refit.

The CI test the issue demands: the CDNOW sample imported with `mailer orders import`,
then `mailer predict fit --as-of 1997-09-30 --json` reproduces the published estimates
within 1%, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer.cli import main
from mailer.customers import orders as orders_service
from mailer.customers import predictions
from mailer.db import session_scope
from mailer.errors import ConfigurationError
from mailer.models import Customer, Order, PredictionFit

_HERE = Path(__file__).resolve()
CDNOW = next((p / "CDNOW_sample.txt" for p in (_HERE.parents[1].parent / "shared" / "datasets" / "cdnow",
                                               _HERE.parents[1].parent.parent / "shared" / "datasets" / "cdnow")
              if (p / "CDNOW_sample.txt").is_file()), None)
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}


def _env(settings, **more) -> dict:
    return {"MAILER_DATABASE_URL": settings.database_url, "MAILER_DEFAULT_CURRENCY": "USD", **more}


def _cdnow_csv(tmp_path: Path) -> Path:
    """The CDNOW sample (master id, sample id, yyyymmdd, CDs, dollars) as an orders import file."""
    if CDNOW is None:
        pytest.skip("../shared/datasets/cdnow/CDNOW_sample.txt is absent")
    out = ["email,order_id,placed_at,total,currency"]
    for n, line in enumerate(CDNOW.read_text().splitlines()):
        if not line.strip():
            continue
        _, cid, day, _, dollars = line.split()
        out.append(f"c{int(cid)}@cdnow.example,{int(cid)}-{n},{day[:4]}-{day[4:6]}-{day[6:]},{Decimal(dollars):.2f},USD")
    path = tmp_path / "cdnow_orders.csv"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def cdnow_imported(settings, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["orders", "import", str(_cdnow_csv(tmp_path))], env=_env(settings))
    assert res.exit_code == 0, res.output
    return settings


def test_cdnow_import_then_fit_reproduces_the_published_estimates(cdnow_imported):
    # Given the CDNOW sample imported with `mailer orders import` (one order per line, 2,357 customers)
    settings = cdnow_imported
    with session_scope(settings) as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Order)).scalar_one() == 6919
        assert s.execute(sa.select(sa.func.count()).select_from(Customer)).scalar_one() == 2357
    # When `mailer predict fit --as-of 1997-09-30 --json` runs
    res = CliRunner().invoke(main, ["predict", "fit", "--as-of", "1997-09-30", "--json"], env=_env(settings))
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # Then every published estimate is reproduced within 1%, on the paper's 2,357 customers and 946 repeat buyers
    assert out["as_of"] == "1997-09-30" and out["customers"] == 2357
    for name, value in PUBLISHED_BGNBD.items():
        assert abs(out["bgnbd"][name] - value) <= 0.01 * value, (name, out["bgnbd"][name])
    for name, value in PUBLISHED_GG.items():
        assert abs(out["gamma_gamma"][name] - value) <= 0.01 * value, (name, out["gamma_gamma"][name])
    assert out["gamma_gamma"]["customers"] == 946
    assert out["bgnbd"]["log_likelihood"] == pytest.approx(-9582.4, abs=0.1)
    # And the fit is recorded with its parameters
    with session_scope(settings) as s:
        fit = s.execute(sa.select(PredictionFit)).scalar_one()
        assert fit.status == "fitted" and fit.trigger == "cli" and fit.params == out


def test_score_writes_every_customers_figures_and_show_explains_them(cdnow_imported):
    # Given the CDNOW orders and a customer with an imported tier
    settings = cdnow_imported
    # When `mailer predict score --as-of 1997-09-30` runs
    runner = CliRunner()
    res = runner.invoke(main, ["predict", "score", "--as-of", "1997-09-30"], env=_env(settings))
    assert res.exit_code == 0, res.output
    assert "scored 2357 customers" in res.output
    # Then every customer has figures in range and the computed tiers split at 50% / 80%
    with session_scope(settings) as s:
        rows = s.execute(sa.select(Customer.p_alive, Customer.predicted_clv, Customer.churn_risk,
                                   Customer.predicted_spend_tier, Customer.expected_next_order_at,
                                   Customer.expected_orders_90d)).all()
    assert len(rows) == 2357
    assert all(r.p_alive is not None and 0 <= r.p_alive <= 1 for r in rows)
    assert all(r.predicted_clv is not None and r.predicted_clv > 0 for r in rows)
    assert {r.churn_risk.value for r in rows} <= {"low", "medium", "high"}
    high = sum(1 for r in rows if r.predicted_spend_tier.value == "high")
    assert abs(high / len(rows) - 0.2) < 0.01
    assert all(r.expected_next_order_at is None or r.expected_next_order_at.date() > dt.date(1997, 9, 30)
               for r in rows)
    # And `mailer predict show` explains one customer in words
    show = runner.invoke(main, ["predict", "show", "c1@cdnow.example"], env=_env(settings))
    assert show.exit_code == 0, show.output
    for word in ("p_alive", "churn_risk", "predicted_clv", "Expected orders", "History"):
        assert word in show.output


def test_not_enough_history_is_reported_and_recorded_and_nothing_is_scored(settings, tmp_path):
    # Given a shop with three orders
    path = tmp_path / "few.csv"
    path.write_text("email,order_id,placed_at,total,currency\na@example.com,1,2026-01-01,10,USD\n"
                    "a@example.com,2,2026-02-01,20,USD\nb@example.com,3,2026-02-01,5,USD\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(main, ["orders", "import", str(path)], env=_env(settings)).exit_code == 0
    # When a score is asked for
    res = runner.invoke(main, ["predict", "score", "--as-of", "2026-03-01"], env=_env(settings))
    # Then it is refused naming each unmet requirement, recorded, and no figure is written
    assert res.exit_code == 2
    assert "2 customers with an order, at least 500 needed" in res.output
    assert "Traceback" not in res.output
    with session_scope(settings) as s:
        assert s.execute(sa.select(PredictionFit.status)).scalars().all() == ["not_enough_history"]
        assert s.execute(sa.select(sa.func.count()).select_from(Customer)
                         .where(Customer.p_alive.is_not(None))).scalar_one() == 0


def test_bad_as_of_is_a_usage_error(settings):
    res = CliRunner().invoke(main, ["predict", "fit", "--as-of", "30/09/1997"], env=_env(settings))
    assert res.exit_code == 2 and "is not a date" in res.output


def test_import_converts_with_the_rate_table_and_reports_bad_rows(settings, tmp_path):
    # Given a rate table (EUR per unit) and a file with good rows, an unknown currency and a bad total
    rates = tmp_path / "rates.csv"
    rates.write_text("currency,rate\nUSD,0.90\nPLN,0.25\n", encoding="utf-8")
    path = tmp_path / "orders.csv"
    path.write_text("email,order_id,placed_at,total,currency,status\n"
                    "a@example.com,A1,2026-01-01T10:00:00+02:00,100.00,USD,\n"
                    "a@example.com,A2,2026-01-02,40,PLN,refunded\n"
                    "b@example.com,B1,2026-01-03,10,JPY,\n"
                    "b@example.com,B2,2026-01-03,-5,EUR,\n"
                    "c@example.com,C1,2026-01-04,7.5,,\n", encoding="utf-8")
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_FX_RATES_FILE": str(rates)}
    # When imported
    res = CliRunner().invoke(main, ["orders", "import", str(path)], env=env)
    # Then bad rows are named by line and column, good rows are stored converted
    assert res.exit_code == 1
    assert "line 4, column currency: no rate for JPY" in res.output
    assert "line 5, column total" in res.output
    with session_scope(settings) as s:
        got = {o.shop_order_id: (o.total, o.currency, o.total_shop, o.status.value, o.placed_at)
               for o in s.execute(sa.select(Order)).scalars()}
    assert got["A1"][:4] == (Decimal("100.00"), "USD", Decimal("90.00"), "placed")
    assert got["A1"][4] == dt.datetime(2026, 1, 1, 8, tzinfo=dt.timezone.utc)
    assert got["A2"][2:4] == (Decimal("10.00"), "refunded")
    assert got["C1"][1:3] == ("EUR", Decimal("7.50"))
    assert set(got) == {"A1", "A2", "C1"}
    # And --strict stores nothing from a file with a bad row
    strict = CliRunner().invoke(main, ["orders", "import", "--strict", str(path)], env=env)
    assert strict.exit_code == 1 and "nothing imported" in strict.output


def test_import_again_updates_in_place(settings, tmp_path):
    # Given an order imported once, when the file is imported again with a new total
    path = tmp_path / "o.csv"
    env = _env(settings)
    path.write_text("email,order_id,placed_at,total,currency\na@example.com,1,2026-01-01,10,USD\n")
    assert CliRunner().invoke(main, ["orders", "import", str(path)], env=env).exit_code == 0
    path.write_text("email,order_id,placed_at,total,currency\na@example.com,1,2026-01-01,12,USD\n")
    res = CliRunner().invoke(main, ["orders", "import", str(path)], env=env)
    # Then there is still one order, updated
    assert "0 new, 1 updated" in res.output
    with session_scope(settings) as s:
        assert s.execute(sa.select(Order.total)).scalars().all() == [Decimal("12.00")]


def test_header_without_order_columns_is_refused(settings, tmp_path):
    path = tmp_path / "o.csv"
    path.write_text("email,total\na@example.com,1\n")
    res = CliRunner().invoke(main, ["orders", "import", str(path)], env=_env(settings))
    assert res.exit_code == 2 and "line 1" in res.output and "the columns 'order_id', 'placed_at'" in res.output


@pytest.mark.parametrize("text, problem", [("currency,rate\nUSD,abc\n", "line 2, column rate"),
                                           ("currency,rate\nUS,1\n", "not a three-letter"),
                                           ("nope\n", "header must be currency,rate")])
def test_a_bad_rate_table_is_a_clear_error(tmp_path, text, problem):
    from tests.conftest import make_settings

    rates = tmp_path / "rates.csv"
    rates.write_text(text)
    with pytest.raises(ConfigurationError, match=problem):
        orders_service.load_rates(make_settings(fx_rates_file=str(rates)))


def test_toml_rate_table(tmp_path):
    from tests.conftest import make_settings

    rates = tmp_path / "rates.toml"
    rates.write_text("[rates]\nUSD = 0.5\n")
    table = orders_service.load_rates(make_settings(fx_rates_file=str(rates)))
    assert table.convert(Decimal("3.33"), "USD") == Decimal("1.66") or table.convert(Decimal("3.33"), "USD") == \
        Decimal("1.67")
    assert table.convert(Decimal("3"), "GBP") is None


def test_order_events_are_kept_as_orders(app):
    # Given an order_placed event, the same event replayed with a corrected total
    from mailer.automations.publish import publish

    data = {"email": "e@example.com", "order_number": "N-1", "total": 25, "currency": "EUR",
            "occurred_at": "2026-03-01T12:00:00Z"}
    publish("order_placed", data, settings=app.settings)
    publish("order_placed", {**data, "total": 30}, settings=app.settings)
    # Then there is one order, with the newer total, in the shop's currency
    with app.session() as s:
        orders = s.execute(sa.select(Order)).scalars().all()
    assert [(o.shop_order_id, o.total, o.total_shop, o.status.value) for o in orders] == [
        ("N-1", Decimal("30.00"), Decimal("30.00"), "placed")]


def test_daily_refit_runs_once_a_day_and_records_a_refusal(app):
    # Given a shop with too little history
    from mailer.automations.publish import publish

    publish("order_placed", {"email": "e@example.com", "order_number": "N-1", "total": 25},
            settings=app.settings)
    # When the worker's hook runs twice on one day
    predictions.daily_refit_hook(app)
    predictions.daily_refit_hook(app)
    # Then one daily attempt is recorded, saying why it did not fit
    with app.session() as s:
        rows = s.execute(sa.select(PredictionFit)).scalars().all()
    assert [(r.trigger, r.status) for r in rows] == [("daily", "not_enough_history")]
    assert "at least 500 needed" in rows[0].detail


def test_daily_refit_is_one_of_the_workers_sweep_hooks():
    from mailer.automations.hooks import prediction_refit_hook
    from mailer.worker.actors import SWEEP_HOOKS

    # The refit, then the prediction triggers (mailer.automations.predicted)
    assert prediction_refit_hook in SWEEP_HOOKS


def test_refunded_and_cancelled_orders_leave_the_models_inputs(app):
    # Given three orders of one customer on three days
    from mailer.automations.publish import publish

    for n, day in ((1, "2026-03-01"), (2, "2026-03-08"), (3, "2026-03-15")):
        publish("order_placed", {"email": "r@example.com", "order_number": f"R-{n}", "total": 10 * n,
                                 "occurred_at": f"{day}T12:00:00Z"}, settings=app.settings)
    # When the shop reports the second refunded and the third cancelled (and a replay of the second's placement)
    publish("order_refunded", {"email": "r@example.com", "order_number": "R-2", "reason": "damaged"},
            settings=app.settings)
    publish("order_cancelled", {"email": "r@example.com", "order_number": "R-3"}, settings=app.settings)
    publish("order_placed", {"email": "r@example.com", "order_number": "R-2", "total": 20,
                             "occurred_at": "2026-03-08T12:00:00Z"}, settings=app.settings)
    # Then the orders keep their statuses, and only the first is in the models' frequency and spend
    with app.session() as s:
        statuses = dict(s.execute(sa.select(Order.shop_order_id, Order.status)).all())
        arrays = orders_service.order_arrays(s, dt.date(2026, 3, 31))
    assert {k: v.value for k, v in statuses.items()} == {"R-1": "placed", "R-2": "refunded", "R-3": "cancelled"}
    assert arrays.amounts.tolist() == [10.0]
    assert str(arrays.days[0]) == "2026-03-01"
