"""The scored figures as written to customers, and as the console shows them (dashboard, profile).

On the CDNOW sample imported through the product: the bulk write (temporary table and one
``UPDATE ... FROM``) stores exactly what the models computed, and the dashboard's churn-risk
counts and CLV chart, and the profile's figures and reasons, agree with the stored rows.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest
import sqlalchemy as sa

from mailer import dashboard
from mailer.customers import orders as orders_service
from mailer.customers import predictions
from mailer.models import Customer, SpendTier
from mailer.predictions import scores
from tests.conftest import make_settings
from tests.test_predictions_product import _cdnow_csv

AS_OF = dt.date(1997, 9, 30)


@pytest.fixture
def settings(db_url):
    return make_settings(database_url=db_url, default_currency="USD")


@pytest.fixture
def scored(app, tmp_path):
    settings = app.settings
    orders_service.import_orders_file(settings, _cdnow_csv(tmp_path))
    with app.session() as s:
        # A customer with an imported tier and no order, and one scored customer with an imported tier.
        s.add(Customer(email="imported@example.com", email_hash="h", predicted_spend_tier=SpendTier.high))
        s.execute(sa.update(Customer).where(Customer.email == "c1@cdnow.example")
                  .values(predicted_spend_tier=SpendTier.low))
    outcome = predictions.run(settings, as_of=AS_OF, score=True)
    return app, outcome


def test_written_figures_are_exactly_the_models_output(scored):
    # Given the CDNOW orders scored through `predict score`'s path
    app, outcome = scored
    expected = scores.score(outcome.fit.summary, outcome.fit.models, predictions.score_config(app.settings))
    # When the customers' rows are read back
    with app.session() as s:
        rows = {r.id: r for r in s.execute(sa.select(Customer))
                .scalars()}
        # Then every scored customer holds the models' figures, unscored ones NULLs
        assert outcome.scored == int(expected.scored.sum()) > 2000
        for i, cid in enumerate(expected.customer_ids.tolist()):
            c = rows[cid]
            if not expected.scored[i]:
                assert c.p_alive is None and c.predictions_at is None
                continue
            assert c.p_alive == pytest.approx(float(expected.p_alive[i]), rel=1e-12)
            assert c.expected_orders_90d == pytest.approx(float(expected.expected_orders_90d[i]), rel=1e-12)
            assert c.expected_orders_365d == pytest.approx(float(expected.expected_orders_365d[i]), rel=1e-12)
            assert c.predicted_clv == pytest.approx(float(expected.predicted_clv[i]), rel=1e-12)
            day = expected.expected_next_order_at[i]
            assert (c.expected_next_order_at.date() if c.expected_next_order_at else None) == \
                (None if np.isnat(day) else day.astype(dt.date))
            assert c.expected_next_order_at is None or c.expected_next_order_at.tzinfo is not None
            assert (c.churn_risk.value if c.churn_risk else None) == expected.churn_risk(i)
            assert (c.predicted_spend_tier.value if c.predicted_spend_tier else None) == \
                expected.predicted_spend_tier(i)
        # And the imported tier is kept only where the model could not score
        imported = next(c for c in rows.values() if c.email == "imported@example.com")
        assert imported.predicted_spend_tier is SpendTier.high and imported.p_alive is None


def test_a_rescore_clears_customers_no_longer_scorable(scored):
    # Given scored customers, and one whose orders are then all cancelled
    app, _ = scored
    with app.session() as s:
        cid = s.execute(sa.select(Customer.id).where(Customer.email == "c2@cdnow.example")).scalar_one()
        s.execute(sa.text("UPDATE orders SET status = 'cancelled' WHERE customer_id = :c"), {"c": cid})
    # When the shop is scored again
    predictions.run(app.settings, as_of=AS_OF, score=True)
    # Then that customer's figures are NULL (never stale), the others are scored
    with app.session() as s:
        c = s.get(Customer, cid)
        assert (c.p_alive, c.churn_risk, c.predicted_clv, c.predictions_at) == (None, None, None, None)
        assert s.execute(sa.select(sa.func.count()).where(Customer.p_alive.is_not(None))).scalar_one() > 2000


def test_the_dashboard_shows_churn_counts_and_the_clv_chart(scored, console_as):
    # Given the scored shop
    app, outcome = scored
    with app.session() as s:
        counts = dict(s.execute(sa.select(Customer.churn_risk, sa.func.count()).where(Customer.churn_risk.is_not(None))
                                .group_by(Customer.churn_risk)).all())
        figures = dashboard.predictions(s)
    # Then the figures count every scored customer once: per risk and over the CLV bars
    assert figures.churn_risk == {k.value: v for k, v in counts.items()}
    assert sum(b.customers for b in figures.clv_bins) == outcome.scored == figures.scored
    assert len(figures.clv_bins) == dashboard.CLV_BINS and figures.clv_bins[-1].high is None
    # When a viewer opens the dashboard
    page = console_as("viewer").get("/console/")
    # Then the prediction card shows the counts and a chart with one bar per range
    assert page.status_code == 200
    card = page.text[page.text.index('id="h-predictions"'):]
    assert f"Churn risk high</dt><dd>{figures.churn_risk['high']}</dd>" in card
    assert 'aria-label="Customers by predicted lifetime value (12 months)"' in card
    assert card.count('class="bar"') == dashboard.CLV_BINS


def test_the_profile_shows_the_figures_and_why(scored, console_as):
    # Given a scored repeat buyer
    app, _ = scored
    with app.session() as s:
        c = s.execute(sa.select(Customer).where(Customer.email == "c1@cdnow.example")).scalar_one()
        cid, risk, p_alive = c.id, c.churn_risk.value, c.p_alive
    # When an admin opens the profile
    page = console_as("admin").get(f"/console/customers/{cid}")
    # Then the figures are there, with the reasons in words
    assert page.status_code == 200
    section = page.text[page.text.index('id="h-predictions"'):page.text.index('id="h-consent"')]
    assert f"<dt>Churn risk</dt><dd>{risk}</dd>" in section
    assert f"{p_alive * 100:.0f}%" in section
    assert re.search(r"churn_risk \w+: P\(no order in the next 90 days\)", section)
