"""The campaign send path at the limit: slice claims, slice-wide gates, many connections.

Behaviour only (no timing): every delivery sent once with N connections, one lease per
row in the slice's claim, whole slices on a slow process, the slice gate answering as the per-delivery gate does, every
mail through the connections taking its rate-limit token, a stuck relay connection
never holding up a notice, and ESMTP PIPELINING sending the same bytes.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from mailer.app import App, set_app
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.delivery import process as delivery_service
from mailer.models import Customer, Delivery, DeliveryStatus
from mailer.notices import trigger as notices
from mailer.transport import memory
from mailer.transport.base import SendResult
from mailer.transport.senders import Senders
from tests.campaign_support import NEWS_KIND, add_customer, newsletter_templates
from tests.conftest import make_settings


@pytest.fixture
def make_app(db_url, tmp_path):
    made: list[tuple[App, App | None]] = []

    def build(**overrides) -> App:
        memory.clear()
        settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path), **overrides)
        app = App(settings)
        made.append((app, set_app(app)))
        return app

    yield build
    for app, previous in reversed(made):
        for key, pool in list(delivery_service._senders.items()):
            if key[0] == id(app):
                pool.close()
                delivery_service._senders.pop(key, None)
        app.close()
        set_app(previous)


def campaign(app, n: int) -> tuple[int, list[int]]:
    """A running newsletter to ``n`` consenting customers, fanned out; (campaign id, delivery ids)."""
    with app.session() as s:
        for i in range(n):
            add_customer(s, app.settings, f"user{i}@example.com")
        cid = campaigns.create(s, app.settings, app.renderer, name="Spring", template=NEWS_KIND,
                               segment="newsletter_all", data={"headline": "Spring sale"}).id
        campaigns.send(s, app.settings, cid)
    while campaign_actors.fan_out_batch(app, cid):
        pass
    with app.session() as s:
        ids = list(s.execute(select(Delivery.id).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())
    return cid, ids


def statuses(app, ids) -> dict[int, DeliveryStatus]:
    with app.session() as s:
        return dict(s.execute(select(Delivery.id, Delivery.status).where(Delivery.id.in_(ids))).all())


def drain(app, ids: list[int]) -> None:
    """What send_batch messages do until none is left (hand-ons run at once)."""
    owner = delivery_service.worker_id()
    rest = list(ids)
    while rest:
        rest, _ = delivery_service.send_slices(app, rest, owner=owner, slice_s=0.05)
    pool = delivery_service.senders_for(app)
    if pool is not None:
        assert pool.wait_idle(60)


@pytest.mark.parametrize("connections", [0, 4])
def test_every_delivery_is_sent_once_with_n_connections(make_app, connections):
    # Given a campaign to 60 customers and a worker with `connections` SMTP connections
    app = make_app(smtp_connections=connections)
    _, ids = campaign(app, 60)
    # When its deliveries are handed to the send path twice over (a send_batch run twice)
    drain(app, ids + ids)
    # Then every delivery is sent, and each recipient got exactly one message
    assert set(statuses(app, ids).values()) == {DeliveryStatus.sent}
    sent = memory.outbox()
    assert sorted(m.recipient for m in sent) == sorted(f"user{i}@example.com" for i in range(60))
    assert len({m.message["Message-ID"] for m in sent}) == 60


def test_slice_claim_leases_each_row_on_its_own(make_app):
    # Given five deliveries: queued, leased by a live worker, leased by a dead one, sent, and held
    app = make_app()
    _, ids = campaign(app, 5)
    queued, live, dead, sent, held = ids
    now = utcnow()
    with app.session() as s:
        s.execute(update(Delivery).where(Delivery.id == live)
                  .values(status=DeliveryStatus.sending, lease_owner="live", lease_until=now + timedelta(minutes=5)))
        s.execute(update(Delivery).where(Delivery.id == dead)
                  .values(status=DeliveryStatus.sending, lease_owner="dead", lease_until=now - timedelta(seconds=1)))
        s.execute(update(Delivery).where(Delivery.id == sent).values(status=DeliveryStatus.sent))
        s.execute(update(Delivery).where(Delivery.id == held).values(status=DeliveryStatus.held))
    # When one statement claims all five for worker "me"
    rows = delivery_service.claim_many(app, ids, "me")
    # Then exactly the queued one and the one whose lease expired are leased, to "me", each once
    assert [r.id for r in rows] == [queued, dead]
    assert [r.attempts for r in rows] == [1, 1]
    with app.session() as s:
        leases = dict(s.execute(select(Delivery.id, Delivery.lease_owner).where(Delivery.id.in_(ids))).all())
    assert leases == {queued: "me", live: "live", dead: "me", sent: None, held: None}
    # And claiming again finds nothing left to lease
    assert delivery_service.claim_many(app, ids, "other") == []


def test_a_slow_process_still_claims_whole_slices(make_app, monkeypatch):
    # Given a campaign to 20 customers, and a process whose recent mails took 10 s of wall
    # time each (a loaded machine: by time alone, not even one would fit a slice)
    app = make_app()
    _, ids = campaign(app, 20)
    monkeypatch.setattr(delivery_service, "_mail_wall_s", [10.0])
    claims: list[int] = []
    real = delivery_service.claim_many
    monkeypatch.setattr(delivery_service, "claim_many",
                        lambda app_, batch, owner: claims.append(len(batch)) or real(app_, batch, owner))
    # When the send path handles them in one long message
    rest, _ = delivery_service.send_slices(app, ids, owner="w", slice_s=60.0)
    # Then each claim took at least CLAIM_SLICE_MIN deliveries (the last one the remainder),
    # so the claim and the gate's queries are paid per slice, not per mail
    assert rest == []
    assert claims == [8, 8, 4] and delivery_service.CLAIM_SLICE_MIN == 8
    # And every delivery was sent once
    assert set(statuses(app, ids).values()) == {DeliveryStatus.sent}
    assert len(memory.outbox()) == 20


def test_slice_gate_answers_as_the_per_delivery_gate(make_app):
    # Given a campaign whose recipients are: fine, suppressed, withdrawn, erased, capped, fine
    app = make_app(frequency_cap=1, frequency_window_hours=24)
    cid, ids = campaign(app, 6)
    with app.session() as s:
        by_email = {c.email: c for c in s.execute(select(Customer)).scalars()}
        suppressions.suppress(s, address_hash=s.get(Delivery, ids[1]).to_hash, email="user1@example.com",
                              reason="unsubscribe", scope="newsletter")
        consent.append(s, app.settings, customer=by_email["user2@example.com"], purpose="newsletter",
                       action="withdrawn", source="preference_centre")
        s.execute(update(Customer).where(Customer.id == by_email["user3@example.com"].id).values(email=None))
        capped = s.get(Delivery, ids[4])
        s.add(Delivery(idempotency_key="earlier", kind=NEWS_KIND, customer_id=capped.customer_id,
                       to_address=capped.to_address, to_hash=capped.to_hash, locale="en", data={},
                       purpose="newsletter", queue="bulk", status=DeliveryStatus.sent, sent_at=utcnow()))
    with app.session() as s:
        rows = s.execute(select(Delivery).where(Delivery.id.in_(ids)).order_by(Delivery.id)).scalars().all()
        # When the slice is gated in one go, and each delivery on its own
        sliced = delivery_service.gate_slice(app, s, rows)
        single = {}
        for d in rows:
            customer = s.get(Customer, d.customer_id)
            single[d.id] = delivery_service.gate(app, s, d, customer).blocked
    # Then both give the same answers: two cleared, four blocked for their reasons
    as_blocked = {k: (None if isinstance(v, delivery_service._Cleared) else v) for k, v in sliced.items()}
    assert as_blocked == single
    assert [None if v is None else v[0] for v in (single[i] for i in ids)] == [
        None, DeliveryStatus.suppressed, DeliveryStatus.skipped, DeliveryStatus.skipped, DeliveryStatus.skipped, None]
    assert single[ids[2]][1] == "no current consent for newsletter"
    assert single[ids[4]][1].startswith("frequency cap: 1")
    # And a cleared mail carries what composing needs
    cleared = sliced[ids[0]]
    assert cleared.mail.campaign is not None and cleared.mail.campaign.id == cid
    assert cleared.mail.customer.first_name == "Ann"


class CountingLimiter:
    """Stands in for the shared limiter: counts the relay tokens taken, never refuses."""

    def __init__(self):
        self.taken = 0
        self.lock = threading.Lock()

    def try_acquire(self, key, rate, **kw):
        with self.lock:
            self.taken += 1
        return True


def test_every_mail_over_n_connections_takes_its_relay_token(make_app):
    # Given a relay limited to 1000 mails/s and a worker with 4 connections to it
    app = make_app(smtp_connections=4, relay_rate=1000)
    limiter = CountingLimiter()
    app.transport.limiter = limiter
    _, ids = campaign(app, 30)
    # When the campaign is sent
    drain(app, ids)
    # Then every delivery was sent, and each took exactly one token of the shared limiter
    assert set(statuses(app, ids).values()) == {DeliveryStatus.sent}
    assert len(memory.outbox()) == 30
    assert limiter.taken == 30


class StuckRelay:
    """A relay whose campaign connections hang until released; notices go through."""

    name = "stuck"

    def __init__(self):
        self.release = threading.Event()
        self.sent: list[str] = []
        self.stuck = 0
        self.lock = threading.Lock()

    def send(self, *, envelope_from, recipient, message, relay=None):
        if recipient.startswith("user"):
            with self.lock:
                self.stuck += 1
            self.release.wait(60)
        with self.lock:
            self.sent.append(recipient)
        return SendResult(250, "250 OK", self.name)

    def supports_smtputf8(self):
        return True

    def close(self):
        pass


def test_a_stuck_relay_connection_never_holds_up_a_notice(make_app):
    # Given a worker with 2 campaign connections, both stuck on a relay that does not answer
    app = make_app(smtp_connections=2)
    relay = app.__dict__["transport"] = StuckRelay()
    _, ids = campaign(app, 12)
    # (a slice long enough that only the full connections, not the clock, end it)
    rest, delay_ms = delivery_service.send_slices(app, ids, owner="w", slice_s=2.0)
    # Then the worker thread is handed back with the unclaimed ids, to go on a little later
    assert delay_ms == delivery_service.HAND_ON_DELAY_MS
    assert rest == ids[4:]  # two connections admit four mails; the rest were not even claimed
    assert relay.stuck >= 1
    # When an order notice comes in meanwhile
    notice = notices.create(app, "order_delayed", to="buyer@example.com",
                            data={"order_number": "1001", "new_eta": "2026-12-01"}).delivery_id
    # Then it is sent at once, on the worker thread, while the campaign connections still hang
    assert delivery_service.process(app, notice).status == "sent"
    assert relay.sent == ["buyer@example.com"]
    # And once the relay answers, the campaign completes with every delivery sent once
    relay.release.set()
    drain(app, rest)
    assert set(statuses(app, ids).values()) == {DeliveryStatus.sent}
    assert sorted(r for r in relay.sent if r.startswith("user")) == sorted(f"user{i}@example.com" for i in range(12))


def test_senders_admit_at_most_two_jobs_per_thread():
    # Given two sending threads whose jobs wait for a signal
    pool = Senders(2)
    gate = threading.Event()
    got = pool.reserve(10, timeout_s=0)
    # Then four slots are handed out, and no fifth until one ends
    assert got == 4
    for _ in range(got):
        pool.submit(gate.wait)
    assert pool.reserve(1, timeout_s=0.01) == 0
    gate.set()
    assert pool.wait_idle(10)
    assert pool.reserve(1, timeout_s=0) == 1
    pool.release(1)
    pool.close()


@pytest.mark.smtp
def test_pipelining_sends_the_same_message_bytes(tmp_path):
    # Given the bench sink (it offers PIPELINING) and a message with a line starting with a dot
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from sink import SinkProcess

    from mailer.transport.smtp import SMTPTransport

    with SinkProcess() as sink:
        transport = SMTPTransport(sink.url)
        assert transport._conn().has_extn("pipelining")
        body = (b"From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <p1@example.com>\r\n"
                b"X-Mailer-Delivery: 1\r\n\r\n.leading dot\r\nend\r\n")
        # When two messages go over one pipelined connection
        first = transport.send(envelope_from="a@example.com", recipient="b@example.com", message=body)
        second = transport.send(envelope_from="a@example.com", recipient="b@example.com",
                                message=body.replace(b"p1@", b"p2@"))
        stats = sink.stats()
        transport.close()
    # Then both were accepted, counted as two distinct messages on one connection
    assert first.code == second.code == 250
    assert stats["messages"] == 2 and stats["unique_ids"] == 2 and stats["connections"] == 1
    # And the dot line was doubled on the wire (one byte more per message), nothing else changed
    assert stats["bytes"] == 2 * (len(body) + 1)
