"""Win-back on real parts: a score's churn crossing, a Redis broker and Dramatiq worker, real SMTP.

The figures are written as `mailer predict score` writes them; the prediction triggers
raise ``churn_risk_became``, the shipped ``winback`` rule claims a code, and the worker
sends through aiosmtpd after re-checking consent at send time.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from mailer.automations.predicted import raise_prediction_events
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.models import Customer, Delivery, DeliveryStatus, RewardCode
from tests.conftest import app_with_worker, make_settings
from tests.test_automations_e2e import mails_to, settle, text_of
from tests.test_predictions_triggers import WINBACK

pytestmark = [pytest.mark.redis, pytest.mark.smtp]


@pytest.fixture
def live(db_url, redis_url, smtp_sink, tmp_path):
    rules = tmp_path / "automations"
    rules.mkdir()
    # The shipped rule, its mail held for an hour so consent can change before the worker sends
    (rules / "winback.toml").write_text(WINBACK.read_text().replace('delay = "0s"', 'delay = "1h"'))
    settings = make_settings(database_url=db_url, broker_url=redis_url, smtp_url=smtp_sink.url,
                             automations_dir=rules, quiet_hours="")
    yield from app_with_worker(settings, worker_threads=2, worker_timeout_ms=100)


def test_risk_becoming_high_sends_one_winback_code_to_consenting_customers_only(live, smtp_sink):
    app = live
    with app.session() as s:
        s.add_all([RewardCode(pool="winback", code="BACK-AAA1"), RewardCode(pool="winback", code="BACK-BBB2"),
                   RewardCode(pool="winback", code="BACK-CCC3")])
        ids = {}
        for email, consents in (("ann@example.com", True), ("ben@example.com", False),
                                ("cy@example.com", True)):
            c = get_or_create(s, app.settings, email)
            if consents:
                consent.append(s, app.settings, customer=c, purpose="loyalty", action="granted", source="api")
            ids[email] = c.id
    as_of = dt.date.today()

    def score(risk: str) -> None:
        with app.session() as s:
            s.execute(sa.update(Customer).where(Customer.id.in_(ids.values())).values(churn_risk=risk))

    # Given every customer's first score at medium risk
    score("medium")
    raise_prediction_events(app, as_of=as_of)
    # When the next score puts all three at high risk, and Cy withdraws consent before the worker sends
    score("high")
    raise_prediction_events(app, as_of=as_of)
    with app.session() as s:
        cy = s.get(Customer, ids["cy@example.com"])
        consent.append(s, app.settings, customer=cy, purpose="loyalty", action="withdrawn", source="preference_centre")
    with app.session() as s:
        # The hour passes (time travel on the scheduled rows; the sweeper wakes them)
        s.execute(sa.update(Delivery).where(Delivery.automation == "winback", Delivery.status ==
                                            DeliveryStatus.scheduled)
                  .values(send_after=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
    settle(app)
    # Then Ann got one win-back mail with her code, Ben (never consented) and Cy (withdrew) nothing
    (mail,) = mails_to(smtp_sink, "ann@example.com")
    body = text_of(mail)
    assert "BACK-AAA1" in body and "We miss you" in body and "We miss you" in mail["Subject"]
    assert mail["List-Unsubscribe"]
    assert mails_to(smtp_sink, "ben@example.com") == [] and mails_to(smtp_sink, "cy@example.com") == []
    with app.session() as s:
        statuses = dict(s.execute(sa.select(Delivery.to_address, Delivery.status)
                                  .where(Delivery.automation == "winback")).all())
    assert statuses == {"ann@example.com": DeliveryStatus.sent, "cy@example.com": DeliveryStatus.skipped}
    # When the same score is processed again and the worker sweeps
    raise_prediction_events(app, as_of=as_of)
    settle(app)
    # Then nothing more is sent
    assert len(smtp_sink.received) == 1
