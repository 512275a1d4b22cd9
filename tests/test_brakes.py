"""Brakes: a campaign receiving complaints as ARF reports through ``mailer bounces ingest`` pauses
itself at the threshold (real Dramatiq worker, real aiosmtpd), records why, and sends nothing after
the pause commits; the hard-bounce brake; resume is explicit and recorded; sender health figures."""

from __future__ import annotations

from datetime import timedelta

import dramatiq
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import reports
from mailer.campaigns import service as campaigns
from mailer.cli import main
from mailer.clock import utcnow
from mailer.delivery import brakes
from mailer.models import Bounce, Campaign, CampaignAction, CampaignStatus, Delivery, DeliveryStatus
from mailer.queue import port
from mailer.queue.broker import QUEUES
from mailer.worker.actors import setup
from tests.bounce_support import arf, dsn
from tests.campaign_support import NEWS_KIND, add_customer, newsletter_templates
from tests.conftest import installed_app, make_settings, wait_until

pytestmark = [pytest.mark.smtp]

#: Safety net for the worker, seconds (not a timing assertion).
WAIT_S = 60
RECIPIENTS = 20
FIRST_WAVE = 10
#: Test thresholds: brakes act from 10 mails sent; 2 complaints in 10 (20%) reach the complaint brake.
BRAKE_ENV = {"MAILER_BRAKE_MIN_SENT": "10", "MAILER_MAX_COMPLAINT_RATE": "0.2", "MAILER_MAX_HARD_BOUNCE_RATE": "0.15"}


@pytest.fixture
def brake_app(db_url, smtp_sink, tmp_path):
    settings = make_settings(database_url=db_url, smtp_url=smtp_sink.url, templates_dir=newsletter_templates(tmp_path),
                             brake_min_sent=10, max_complaint_rate=0.2, max_hard_bounce_rate=0.15)
    for app in installed_app(settings):
        app.broker = setup(settings)
        yield app
        app.broker.close()


def _cli_env(app) -> dict:
    return {"MAILER_DATABASE_URL": app.settings.database_url, "MAILER_SECRET_KEY": app.settings.secret_key,
            "MAILER_BROKER_URL": "stub://", "MAILER_TEMPLATES_DIR": str(app.settings.templates_dir), **BRAKE_ENV}


def _drain(broker, worker) -> None:
    for _ in range(3):
        for q in QUEUES:
            broker.join(q, timeout=WAIT_S * 1000, fail_fast=True)
        worker.join()


def _campaign_half_sent(app, smtp_sink, worker) -> tuple[int, list[Delivery]]:
    """A running campaign to 20 customers whose first 10 went out through the worker to the SMTP
    sink; the other 10 wait for their local time tomorrow (status scheduled)."""
    settings = app.settings
    with app.session() as s:
        for i in range(RECIPIENTS):
            add_customer(s, settings, f"r{i:02d}@example.com")
        cid = campaigns.create(s, settings, app.renderer, name="Spring", template=NEWS_KIND,
                               segment="newsletter_all", data={"headline": "Sale"}).id
        campaigns.send(s, settings, cid)
    while campaign_actors.fan_out_batch(app, cid):
        pass
    app.broker.flush_all()  # the fan-out's messages: this test enqueues the first wave itself
    with app.session() as s:
        ids = list(s.execute(select(Delivery.id).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())
        s.execute(update(Delivery).where(Delivery.id.in_(ids[FIRST_WAVE:]))
                  .values(status=DeliveryStatus.scheduled, send_after=utcnow() + timedelta(days=1)))
    worker.start()
    assert port.enqueue_batches(ids[:FIRST_WAVE], 5)
    _drain(app.broker, worker)
    assert wait_until(lambda: len(smtp_sink.handler.received) >= FIRST_WAVE, WAIT_S)
    with app.session() as s:
        rows = list(s.execute(select(Delivery).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())
        for r in rows:
            s.expunge(r)
    return cid, rows


def _ingest(app, tmp_path, name: str, raw: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(raw)
    res = CliRunner().invoke(main, ["bounces", "ingest", str(path)], env=_cli_env(app))
    assert res.exit_code == 0, res.output
    return res.output


def _status(app, cid: int) -> Campaign:
    with app.session() as s:
        c = s.get(Campaign, cid)
        s.expunge(c)
        return c


def test_complaints_through_bounces_ingest_pause_the_campaign_at_the_threshold_and_nothing_more_is_sent(
        brake_app, smtp_sink, tmp_path):
    app = brake_app
    worker = dramatiq.Worker(app.broker, worker_timeout=50, worker_threads=2)
    try:
        # Given a running campaign with 10 mails out (the brake's minimum) and 10 still to go
        cid, rows = _campaign_half_sent(app, smtp_sink, worker)
        sent = [r for r in rows if r.status is DeliveryStatus.sent]
        assert len(sent) == FIRST_WAVE and len(smtp_sink.handler.received) == FIRST_WAVE
        # When one recipient complains (10% < 20%), through `mailer bounces ingest`
        _ingest(app, tmp_path, "c1.eml", arf(to="fbl@example.com", message_id=sent[0].message_id,
                                             recipient=sent[0].to_address))
        # Then the campaign keeps running
        assert _status(app, cid).status is CampaignStatus.running
        # When a second one complains (2 in 10 = 20%: the threshold)
        out = _ingest(app, tmp_path, "c2.eml", arf(to="fbl@example.com", message_id=sent[1].message_id,
                                                   recipient=sent[1].to_address))
        # Then the campaign is paused by the complaint brake, with the figures it acted on
        c = _status(app, cid)
        assert c.status is CampaignStatus.paused and c.brake == brakes.COMPLAINT_BRAKE
        assert (c.brake_detail["sent"], c.brake_detail["complaints"]) == (FIRST_WAVE, 2)
        assert c.brake_detail["complaint_rate"] == 0.2
        assert "complaint_rate brake" in out
        with app.session() as s:
            (action,) = s.execute(select(CampaignAction).where(CampaignAction.campaign_id == cid)).scalars()
            assert (action.action, action.actor, action.detail["held"]) == ("paused", "brake:complaint_rate", 10)
            statuses = {d.status for d in s.execute(select(Delivery).where(Delivery.id.in_(
                [r.id for r in rows[FIRST_WAVE:]]))).scalars()}
            assert statuses == {DeliveryStatus.held}
            # And `mailer campaign status` shows which brake acted
            assert reports.figures(s, cid).brake == "complaint_rate"
        status = CliRunner().invoke(main, ["campaign", "status", str(cid)], env=_cli_env(app))
        assert "PAUSED BY BRAKE" in status.output and "complaint_rate" in status.output
        # When, after the pause committed, the rest become due and their messages reach the worker
        # anyway (one even back in `queued`, as if a worker had picked it up just before the pause)
        rest = [r.id for r in rows[FIRST_WAVE:]]
        with app.session() as s:
            s.execute(update(Delivery).where(Delivery.id.in_(rest)).values(send_after=utcnow() - timedelta(minutes=1)))
            s.execute(update(Delivery).where(Delivery.id == rest[0]).values(status=DeliveryStatus.queued))
        assert port.enqueue_batches(rest, 5)
        _drain(app.broker, worker)
        # Then the send path's gate holds every one of them: nothing more reaches the SMTP sink
        assert len(smtp_sink.handler.received) == FIRST_WAVE
        with app.session() as s:
            assert {d.status for d in s.execute(select(Delivery).where(Delivery.id.in_(rest))).scalars()} == {
                DeliveryStatus.held}
        # When a person resumes it explicitly
        res = CliRunner().invoke(main, ["campaign", "resume", str(cid)], env=_cli_env(app))
        assert res.exit_code == 0, res.output
        # Then the resume is recorded with the brake it overrode, and the brake is cleared
        c = _status(app, cid)
        assert c.status is CampaignStatus.running and c.brake is None
        with app.session() as s:
            acts = brakes.actions(s, cid)
        assert [(a.action, a.actor) for a in acts] == [("paused", "brake:complaint_rate"), ("resumed", "cli")]
        assert acts[1].detail["brake"] == "complaint_rate"
    finally:
        worker.stop()


def test_hard_bounces_pass_the_rate_and_the_hard_bounce_brake_pauses(brake_app, smtp_sink, tmp_path):
    app = brake_app
    worker = dramatiq.Worker(app.broker, worker_timeout=50, worker_threads=2)
    try:
        # Given a running campaign with 10 mails out
        cid, rows = _campaign_half_sent(app, smtp_sink, worker)
        sent = [r for r in rows if r.status is DeliveryStatus.sent]
        from mailer.delivery.compose import return_path

        def bounce(d, name):
            _ingest(app, tmp_path, name, dsn(to=return_path(app.settings, d.id), message_id=d.message_id,
                                             recipient=d.to_address))
        # When one hard bounce arrives (10%: not past 15%)
        bounce(sent[0], "b1.eml")
        assert _status(app, cid).status is CampaignStatus.running
        # When a second one arrives (20%: past 15%)
        bounce(sent[1], "b2.eml")
        # Then the hard-bounce brake paused it, with its figures
        c = _status(app, cid)
        assert c.status is CampaignStatus.paused and c.brake == brakes.HARD_BOUNCE_BRAKE
        assert c.brake_detail["hard_bounces"] == 2 and c.brake_detail["hard_bounce_rate"] == 0.2
    finally:
        worker.stop()


def test_the_brakes_wait_for_the_minimum_sent(db_url):
    # Given the default minimum of 1000 mails: 9 complaints in 10 sent
    settings = make_settings(database_url=db_url)
    # When the verdict is asked, then no brake acts; at 1000 sent with 3 complaints (0.3%) one does
    assert brakes.verdict(settings, brakes.Health(sent=10, complaints=9, hard_bounces=0)) is None
    assert brakes.verdict(settings, brakes.Health(sent=1000, complaints=2, hard_bounces=50)) is None
    assert brakes.verdict(settings, brakes.Health(sent=1000, complaints=3, hard_bounces=0))[0] == "complaint_rate"
    assert brakes.verdict(settings, brakes.Health(sent=1000, complaints=0, hard_bounces=51))[0] == "hard_bounce_rate"


def test_domain_complaint_rate_over_24_hours_with_warning_levels(db_url, tmp_path):
    # Given marketing from news.example.com and notices from orders.example.com, 1000 marketing mails
    # and 2 complaints in the last 24 hours, and 1 complaint two days ago
    settings = make_settings(database_url=db_url, marketing_from="Shop <news@news.example.com>",
                             transactional_from="Shop <orders@orders.example.com>")
    for app in installed_app(settings):
        now = utcnow()
        with app.session() as s:
            rows = [Delivery(idempotency_key=f"k{i}", kind="newsletter/x", to_hash="h", locale="en", data={},
                             purpose="newsletter" if i < 1000 else "transactional", queue="bulk",
                             status=DeliveryStatus.sent, sent_at=now - timedelta(hours=1)) for i in range(1010)]
            s.add_all(rows)
            s.flush()
            for d, when in ((rows[0], now - timedelta(hours=2)), (rows[1], now - timedelta(hours=3)),
                            (rows[2], now - timedelta(days=2))):
                s.add(Bounce(delivery_id=d.id, email_hash="h", kind="complaint", occurred_at=when))
        # When the rates are asked
        with app.session() as s:
            rates = {d.domain: d for d in brakes.domain_complaint_rates(s, settings, now=now)}
        # Then the marketing domain is at 0.2%: a warning; the transactional one is fine
        assert (rates["news.example.com"].sent, rates["news.example.com"].complaints) == (1000, 2)
        assert rates["news.example.com"].level == "warning" and rates["orders.example.com"].level == "ok"
        assert brakes.level_of(0.003) == "critical"
