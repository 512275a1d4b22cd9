"""A/B tests end to end with real parts: Redis broker + Dramatiq worker, aiosmtpd, uvicorn.

The test share goes out split across the variants; recipients open and click B's mails
through the real tracking endpoints; the wait ends, the worker's ``decide_ab_test`` picks
B, and the rest of the segment receives B only; every recipient gets exactly one mail.
Without a significant difference the default variant goes to the rest.
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy

import dramatiq
import httpx
import pytest
from sqlalchemy import select, update

from mailer.app import App, set_app
from mailer.campaigns import abtest
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.clock import utcnow
from mailer.models import AbTest, Campaign, CampaignStatus, Delivery
from mailer.queue import port
from mailer.web.app import create_app
from mailer.worker.actors import setup
from tests.campaign_support import add_customer
from tests.conftest import make_settings
from tests.smtp_sink import free_port
from tests.test_campaign_e2e import Server, _wait_for

pytestmark = [pytest.mark.redis, pytest.mark.smtp, pytest.mark.slow]

KIND = "newsletter/product_launch"
SUBJECT_A = "New in: the Harbour collection"
SUBJECT_B = "Only this week: the Harbour collection"
#: A mail client's user agent (not a privacy proxy's, not a scanner's).
HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
RECIPIENTS = 40


@pytest.fixture
def live(db_url, redis_url, smtp_sink):
    """App + Redis broker + in-process Dramatiq worker + uvicorn on a free port."""
    port_number = free_port()
    settings = make_settings(database_url=db_url, broker_url=redis_url, smtp_url=smtp_sink.url,
                             base_url=f"http://127.0.0.1:{port_number}", machine_open_window_s=0, frequency_cap=0)
    app = App(settings)
    previous = set_app(app)
    broker = setup(settings)
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    with Server(create_app(app=app), port_number):
        app.broker, app.worker, app.server_url = broker, worker, f"http://127.0.0.1:{port_number}"
        with app.session() as s:
            for i in range(RECIPIENTS):
                add_customer(s, settings, f"reader{i}@example.com")
        yield app
    worker.stop()
    broker.close()
    app.close()
    set_app(previous)


def _settled(app, cid: int, smtp_sink, state: str) -> bool:
    """The test is in ``state``, its fan-out is done and every delivery reached the sink.

    Polled rather than joined: the decision message waits in the broker, delayed by the
    test's wait, so the queues are never empty meanwhile.
    """
    with app.session() as s:
        test, c = s.get(AbTest, cid), s.get(Campaign, cid)
        pending = s.execute(select(Delivery.id).where(Delivery.campaign_id == cid,
                                                      Delivery.status.in_(campaigns.PENDING)).limit(1)).first()
        total = len(s.execute(select(Delivery.id).where(Delivery.campaign_id == cid)).all())
    return (test.state == state and c.fanout_done and pending is None
            and sum(1 for r in smtp_sink.received if r.rcpt_tos) >= total)


def _start_test(app, name: str, smtp_sink) -> int:
    with app.session() as s:
        cid = campaigns.create(s, app.settings, app.renderer, name=name, template=KIND, segment="newsletter_all",
                               data=app.renderer.sample(KIND),
                               variants=[{"template": None, "subjects": {"*": SUBJECT_A}, "preheaders": {}},
                                         {"template": None, "subjects": {"*": SUBJECT_B}, "preheaders": {}}],
                               ab=abtest.Settings(test_share_percent=50, winner_metric="opens", wait_s=4 * 3600)).id
        campaigns.send(s, app.settings, cid)
    campaign_actors.start(app, cid)
    _wait_for(lambda: _settled(app, cid, smtp_sink, abtest.WAITING), "the test share to be sent")
    return cid


def _mails(received) -> list[tuple[str, str, str]]:
    """(recipient, subject, html) of each mail the sink received."""
    out = []
    for r in received:
        msg = message_from_bytes(r.raw, policy=policy.default)
        out.append((r.rcpt_tos[0], str(msg["Subject"]), msg.get_body(("html",)).get_content()))
    return out


def _wait_is_over(app, cid: int) -> None:
    """Time passes: the test's end moves to now (the worker decides only after it)."""
    with app.session() as s:
        s.execute(update(AbTest).where(AbTest.campaign_id == cid).values(test_ends_at=utcnow()))


def test_b_wins_on_opens_and_clicks_and_the_rest_receive_only_b(live, smtp_sink):
    app = live
    # Given an A/B test of two subjects on half of 40 readers, sent by the worker through Redis
    cid = _start_test(app, "Harbour AB", smtp_sink)
    test_mails = _mails(smtp_sink.received)
    with app.session() as s:
        variants = dict(s.execute(select(Delivery.to_address, Delivery.variant)
                                  .where(Delivery.campaign_id == cid)).all())
        assert s.get(AbTest, cid).state == abtest.WAITING
    # Then the test share went out, split across both variants, each mail with its variant's subject
    assert 0 < len(test_mails) < RECIPIENTS and len(test_mails) == len(variants)
    assert {v for v in variants.values()} == {"A", "B"}
    for to, subject, _ in test_mails:
        assert subject == (SUBJECT_A if variants[to] == "A" else SUBJECT_B)
    # When B's readers open (a human mail client) and click, through the real tracking endpoints
    with httpx.Client(follow_redirects=False, timeout=30, headers={"User-Agent": HUMAN_UA}) as http:
        for to, _, html in test_mails:
            if variants[to] != "B":
                continue
            pixel = re.search(r'src="([^"]*/t/o/[^"]+)"', html).group(1).replace("&amp;", "&")
            assert http.get(pixel).status_code == 200
            link = next(u for u in re.findall(r'href="([^"]+)"', html) if "/t/c/" in u).replace("&amp;", "&")
            assert http.get(link).status_code == 302
    # And the wait is over: the worker's decide_ab_test runs (twice: a redelivered message)
    _wait_is_over(app, cid)
    port.send(port.DECIDE_AB_TEST, cid)
    port.send(port.DECIDE_AB_TEST, cid)
    _wait_for(lambda: _settled(app, cid, smtp_sink, abtest.DECIDED), "the rest to be sent")
    with app.session() as s:
        test = s.get(AbTest, cid)
        assert test.state == abtest.DECIDED and test.winner == "B" and test.decision["no_winner"] is False
        campaigns.finish_completed(s)
        assert s.get(Campaign, cid).status is CampaignStatus.completed
    # Then the rest of the segment received B only, and every reader exactly one mail
    everything = _mails(smtp_sink.received)
    rest = everything[len(test_mails):]
    assert rest and {subject for _, subject, _ in rest} == {SUBJECT_B}
    recipients = [to for to, _, _ in everything]
    assert sorted(recipients) == sorted(f"reader{i}@example.com" for i in range(RECIPIENTS))


def test_without_a_significant_difference_the_default_goes_to_the_rest(live, smtp_sink):
    app = live
    # Given an A/B test whose mails nobody opens
    cid = _start_test(app, "Harbour AB, quiet", smtp_sink)
    test_count = len(smtp_sink.received)
    assert 0 < test_count < RECIPIENTS
    # When the wait is over and the worker decides
    _wait_is_over(app, cid)
    port.send(port.DECIDE_AB_TEST, cid)
    _wait_for(lambda: _settled(app, cid, smtp_sink, abtest.DECIDED), "the rest to be sent")
    # Then there is no winner, with the interval, and the rest receive the default (A) only
    with app.session() as s:
        test = s.get(AbTest, cid)
        assert test.winner == "A" and test.decision["no_winner"] is True
        low, high = test.decision["interval"]
        assert low <= 0 <= high
    everything = _mails(smtp_sink.received)
    assert {subject for _, subject, _ in everything[test_count:]} == {SUBJECT_A}
    assert sorted(to for to, _, _ in everything) == sorted(f"reader{i}@example.com" for i in range(RECIPIENTS))
