"""A campaign slice sends no mail after its consent locks or its leases may be gone.

A slice (up to ``CLAIM_SLICE`` mails, one claim, one gate) sends its mails one after the
other inside one read transaction that holds ``FOR SHARE`` on the recipients' consent rows
(PostgreSQL). When one relay reply is slow (or a link is cut) for longer than
``MAILER_DB_IDLE_IN_TRANSACTION_S``, the server ends that session and its locks: a
withdrawal for a later recipient of the slice commits. The slice must then not send that
recipient's mail on its old gate; nor may it go on past its lease, when another worker may
have taken the rest (found by tests/test_multihost.py; docs/delivery.md, "Running on many
machines").
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from mailer.app import App, set_app
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.consent import ledger
from mailer.delivery import process as delivery_service
from mailer.models import Delivery, DeliveryStatus
from tests.campaign_support import NEWS_KIND, add_customer, newsletter_templates
from tests.conftest import make_settings
from tests.smtp_sink import SinkHandler, SMTPSink

pytestmark = pytest.mark.smtp

#: Longest the test waits for a step (a failure, not a threshold), seconds.
WAIT_S = 60


@dataclass
class FirstReplyHeld(SinkHandler):
    """Holds the reply to the first message until ``go`` is set (a slow relay, or a cut link)."""

    arrived: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server, session, envelope):
        if not self.arrived.is_set():
            self.arrived.set()
            while not self.go.is_set():
                await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def held_sink():
    sink = SMTPSink()
    sink.handler = sink.controller.handler = FirstReplyHeld()
    sink.start()
    yield sink
    sink.handler.go.set()
    sink.stop()


def _app(url, tmp_path, sink, **overrides) -> App:
    return App(make_settings(database_url=url, smtp_url=sink.url, templates_dir=newsletter_templates(tmp_path),
                             **overrides))


def _campaign(app: App, n: int) -> list[int]:
    with app.session() as s:
        for i in range(n):
            add_customer(s, app.settings, f"user{i}@example.com")
        cid = campaigns.create(s, app.settings, app.renderer, name="Slice", template=NEWS_KIND,
                               segment="newsletter_all", data={"headline": "Sale"}, tracking=False).id
        campaigns.send(s, app.settings, cid)
    while campaign_actors.fan_out_batch(app, cid):
        pass
    with app.session() as s:
        return list(s.execute(select(Delivery.id).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())


@dataclass
class SliceInFlight:
    """A slice of campaign mails sending on its own thread, its first reply held by the sink."""

    app: App
    ids: list[int]
    sink: SMTPSink
    out: dict = field(default_factory=dict)
    thread: threading.Thread | None = None

    def release_and_join(self) -> None:
        """Let the relay answer the held mail and wait for the slice to end."""
        self.sink.handler.go.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()


@contextmanager
def _slice_in_flight(url, tmp_path, sink, monkeypatch, n: int = 3, **overrides):
    """``send_slices`` over ``n`` fresh campaign mails on a thread, as one send_batch message would
    (one slice of them all), returned once the relay holds the first mail's reply."""
    monkeypatch.setattr(delivery_service, "_mail_wall_s", [0.0])  # a fresh process: one slice for all
    app = _app(url, tmp_path, sink, **overrides)
    previous = set_app(app)
    try:
        flight = SliceInFlight(app=app, ids=_campaign(app, n), sink=sink)

        def run():
            flight.out["rest"], flight.out["delay_ms"] = delivery_service.send_slices(
                app, flight.ids, owner="slow-worker", slice_s=600)

        flight.thread = threading.Thread(target=run)
        flight.thread.start()
        assert sink.handler.arrived.wait(WAIT_S)
        yield flight
    finally:
        sink.handler.go.set()
        set_app(previous)
        app.close()


@pytest.mark.postgres
def test_a_withdrawal_that_commits_while_a_reply_is_held_stops_the_rest_of_the_slice(pg_url, tmp_path, held_sink,
                                                                                    monkeypatch):
    # Given a slice of three campaign mails and a relay that holds its reply to the first one
    # for longer than the idle-in-transaction timeout (1 s); the lock timeout is only a ceiling
    # (the chain lock is one per database, shared with every schema's tests running meanwhile)
    with _slice_in_flight(pg_url, tmp_path, held_sink, monkeypatch,
                          db_idle_in_transaction_s=1, db_lock_timeout_s=120) as flight:
        app, ids = flight.app, flight.ids
        # When the second recipient withdraws (it commits once the server ends the silent read session)
        with app.session() as s:
            ledger.withdraw(s, app.settings, purpose="newsletter", email="user1@example.com", source="api")
        # And then the relay answers the first mail
        flight.release_and_join()
        # Then the slice sent nothing more on its old gate: the rest are handed on, not sent
        assert [r.rcpt_tos for r in held_sink.received] == [["user0@example.com"]]
        assert flight.out["rest"] == ids
        # And when they go on, the withdrawn recipient is skipped and the other one is sent
        rest = flight.out["rest"]
        while rest:
            rest, _ = delivery_service.send_slices(app, rest, owner="next-worker", slice_s=600)
        with app.session() as s:
            status = dict(s.execute(select(Delivery.to_address, Delivery.status).where(Delivery.id.in_(ids))).all())
        assert status == {"user0@example.com": DeliveryStatus.sent, "user1@example.com": DeliveryStatus.skipped,
                          "user2@example.com": DeliveryStatus.sent}
        assert sorted(r.rcpt_tos[0] for r in held_sink.received) == ["user0@example.com", "user2@example.com"]


def test_a_slice_sends_nothing_more_once_half_its_lease_has_passed(db_url, tmp_path, held_sink, monkeypatch):
    # Given a slice of three campaign mails with a 2 s lease, and a relay that holds its reply to the first
    with _slice_in_flight(db_url, tmp_path, held_sink, monkeypatch, lease_s=2) as flight:
        app, ids = flight.app, flight.ids
        with app.session() as s:
            lease_until = s.execute(select(Delivery.lease_until).where(Delivery.id == ids[1])).scalar_one()
        assert lease_until is not None
        # When the reply comes only after the lease has expired (another worker may have the rest by now)
        time.sleep(app.settings.lease_s + 0.5)
        flight.release_and_join()
        # Then the slice sent only the mail that was in flight and handed the rest on
        assert [r.rcpt_tos for r in held_sink.received] == [["user0@example.com"]]
        assert flight.out["rest"] == ids
        with app.session() as s:
            rest_status = set(s.execute(select(Delivery.status).where(Delivery.id.in_(ids[1:]))).scalars())
        assert rest_status == {DeliveryStatus.queued}
