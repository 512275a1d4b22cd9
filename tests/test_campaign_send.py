"""Campaigns end to end in process: create (validated), fan-out in keyset batches, send once,
pause / resume / cancel, local-time delivery, frequency cap, resuming a fan-out after a crash."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dramatiq
import pytest
from sqlalchemy import func, select, update

from mailer.app import App, set_app
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import reports
from mailer.campaigns import service as campaigns
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.delivery import process as delivery_service
from mailer.errors import InvalidState, SegmentError, TemplateError, ValidationError
from mailer.models import Campaign, CampaignStatus, Customer, Delivery, DeliveryStatus
from mailer.queue.broker import QUEUES
from mailer.transport import memory
from mailer.worker.actors import SWEEP_HOOKS, setup
from tests.campaign_support import NEWS_KIND, add_customer, newsletter_templates
from tests.conftest import make_settings


class Env:
    """An App on the test database with a stub broker whose worker starts on demand."""

    def __init__(self, app: App):
        self.app = app
        self.settings = app.settings
        self.broker = setup(app.settings)
        self.worker: dramatiq.Worker | None = None

    def drain(self) -> None:
        if self.worker is None:
            self.worker = dramatiq.Worker(self.broker, worker_timeout=50, worker_threads=2)
            self.worker.start()
        for _ in range(4):  # actors enqueue further messages (fan-out -> batches)
            for q in QUEUES:
                self.broker.join(q, timeout=60_000, fail_fast=True)
            self.worker.join()

    def pending_messages(self) -> int:
        return sum(self.broker.queues[q].qsize() for q in self.broker.queues)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.broker.close()


@pytest.fixture
def env(db_url, tmp_path):
    memory.clear()
    settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path), batch_size=2)
    app = App(settings)
    previous = set_app(app)
    e = Env(app)
    yield e
    e.close()
    app.close()
    set_app(previous)


def _customers(env, n: int, **kw) -> list[int]:
    with env.app.session() as s:
        return [add_customer(s, env.settings, f"user{i}@example.com", **kw).id for i in range(n)]


def _create(env, **kw) -> int:
    args = dict(name="Spring", template=NEWS_KIND, segment="newsletter_all", data={"headline": "Spring sale"})
    args.update(kw)
    with env.app.session() as s:
        return campaigns.create(s, env.settings, env.app.renderer, **args).id


def _send(env, cid: int) -> None:
    with env.app.session() as s:
        campaigns.send(s, env.settings, cid)
    campaign_actors.start(env.app, cid)


def _deliveries(env, cid: int) -> list[Delivery]:
    with env.app.session() as s:
        return list(s.execute(select(Delivery).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())


def _recipients() -> list[str]:
    return sorted(m.recipient for m in memory.outbox())


def _status(env, cid: int) -> CampaignStatus:
    with env.app.session() as s:
        return s.get(Campaign, cid).status


# -- creation -------------------------------------------------------------------------------------
def test_create_validates_template_segment_and_locales(env):
    _customers(env, 1, locale="pl")
    with pytest.raises(SegmentError) as info:
        _create(env, segment="no_such_segment")
    assert info.value.field == "segment"
    with pytest.raises(ValidationError) as info:
        _create(env, template="order_delayed")
    assert info.value.field == "template"
    with pytest.raises(ValidationError) as info:
        _create(env, data={})
    assert info.value.field == "data.headline"
    # A broken Polish template is found at creation because a customer reads Polish
    (env.settings.templates_dir / "newsletter" / "test_news" / "pl.mjml").write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>{{ headline }</mj-text></mj-column></mj-section>"
        "</mj-body></mjml>", encoding="utf-8")
    env.app.renderer.forget() if hasattr(env.app.renderer, "forget") else None
    with pytest.raises(TemplateError) as info:
        _create(env)
    assert "pl" in str(info.value)
    with env.app.session() as s:
        assert s.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0


def test_create_stores_per_locale_subjects_and_a_draft(env):
    _customers(env, 1)
    cid = _create(env, subjects=campaigns.parse_subjects(["Big news", "pl=Wielkie wieści"]))
    with env.app.session() as s:
        c = s.get(Campaign, cid)
        assert c.status is CampaignStatus.draft and c.purpose == "newsletter" and c.tracking
        assert c.subjects["pl"] == "Wielkie wieści" and c.subjects["en"] == "Big news"


def test_parse_helpers_reject_bad_input_naming_the_option():
    for bad, parse, field in (("25:00", campaigns.parse_local_time, "local_time"),
                              ("tomorrow", lambda v: campaigns.parse_send_at(v, make_settings()), "send_at")):
        with pytest.raises(ValidationError) as info:
            parse(bad)
        assert info.value.field == field
    with pytest.raises(ValidationError):
        campaigns.parse_subjects(["a", "b"])


# -- sending --------------------------------------------------------------------------------------
def test_campaign_reaches_every_consenting_unsuppressed_recipient_exactly_once(env, monkeypatch):
    monkeypatch.setattr(campaign_actors, "FANOUT_BATCH", 3)
    ids = _customers(env, 8)
    with env.app.session() as s:
        # One withdrew, one is suppressed, one never consented.
        c1 = s.get(Customer, ids[1])
        consent.append(s, env.settings, customer=c1, purpose="newsletter", action="withdrawn", source="admin")
        suppressions.suppress(s, address_hash=s.get(Customer, ids[2]).email_hash, email="user2@example.com",
                              reason="hard_bounce")
        add_customer(s, env.settings, "nobody@example.com", purposes=())
    cid = _create(env, subjects=campaigns.parse_subjects(["pl=Nowości", "Newsletter for {{ first_name }}"]))
    _send(env, cid)
    env.drain()
    expected = sorted(f"user{i}@example.com" for i in range(8) if i not in (1, 2))
    assert _recipients() == expected
    ds = _deliveries(env, cid)
    assert sorted(d.idempotency_key for d in ds) == sorted(f"campaign:{cid}:{ids[i]}" for i in range(8)
                                                           if i not in (1, 2))
    assert {d.queue for d in ds} == {"bulk"} and all(d.status is DeliveryStatus.sent for d in ds)
    assert memory.outbox()[0].message["Subject"] == "Newsletter for Ann"
    with env.app.session() as s:
        c = s.get(Campaign, cid)
        assert c.fanout_done and c.cursor == ids[-1]
    # The sweeper hook completes it
    campaign_actors.sweep_hook(env.app)
    assert _status(env, cid) is CampaignStatus.completed
    with env.app.session() as s:
        f = reports.figures(s, cid)
    assert (f.sent, f.pending, f.total) == (6, 0, 6)


def test_fan_out_resumes_from_its_checkpoint_without_resending(env, monkeypatch):
    monkeypatch.setattr(campaign_actors, "FANOUT_BATCH", 2)
    _customers(env, 7)
    cid = _create(env)
    with env.app.session() as s:
        campaigns.send(s, env.settings, cid)
    # Given a fan-out that committed two batches and then died (its worker was killed)
    assert campaign_actors.fan_out_batch(env.app, cid)
    assert campaign_actors.fan_out_batch(env.app, cid)
    env.drain()  # the batches already enqueued are sent
    assert len(memory.outbox()) == 4
    # When the sweeper finds the fan-out silent (heartbeat older than sweep_stale_s) and restarts it
    with env.app.session() as s:
        s.execute(update(Campaign).where(Campaign.id == cid)
                  .values(fanout_heartbeat_at=utcnow() - timedelta(seconds=env.settings.sweep_stale_s + 1)))
    campaign_actors.sweep_hook(env.app)
    env.drain()
    # Then every recipient got exactly one mail
    assert _recipients() == sorted(f"user{i}@example.com" for i in range(7))
    assert len(_deliveries(env, cid)) == 7


def test_two_fan_outs_racing_create_each_delivery_once(env, monkeypatch):
    monkeypatch.setattr(campaign_actors, "FANOUT_BATCH", 2)
    _customers(env, 9)
    cid = _create(env)
    with env.app.session() as s:
        campaigns.send(s, env.settings, cid)
    # Two chains of fan-out steps for the same campaign run at the same time
    barrier = threading.Barrier(2)

    def chain():
        barrier.wait()
        while campaign_actors.fan_out_batch(env.app, cid):
            pass

    threads = [threading.Thread(target=chain) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A chain that lost the race stops; the sweeper hook restarts a stopped fan-out
    for _ in range(10):
        with env.app.session() as s:
            if s.get(Campaign, cid).fanout_done:
                break
        campaign_actors.fan_out_batch(env.app, cid)
    env.drain()
    assert len(_deliveries(env, cid)) == 9
    assert _recipients() == sorted(f"user{i}@example.com" for i in range(9))


def test_pause_holds_unsent_mail_and_resume_sends_each_once(env):
    _customers(env, 5)
    cid = _create(env)
    with env.app.session() as s:
        campaigns.send(s, env.settings, cid)
    while campaign_actors.fan_out_batch(env.app, cid):
        pass
    assert env.pending_messages() > 0 and memory.outbox() == []
    # When the campaign is paused before the worker gets to the batches
    with env.app.session() as s:
        assert campaigns.pause(s, cid) == 5
    env.drain()
    # Then nothing went out and every delivery is held
    assert memory.outbox() == []
    assert {d.status for d in _deliveries(env, cid)} == {DeliveryStatus.held}
    # When it is resumed
    with env.app.session() as s:
        campaigns.resume(s, cid)
    assert campaign_actors.enqueue_queued(env.app, cid) == 5
    env.drain()
    # Then each recipient gets exactly one mail
    assert _recipients() == sorted(f"user{i}@example.com" for i in range(5))
    with pytest.raises(InvalidState):
        with env.app.session() as s:
            campaigns.resume(s, cid)


def test_gate_holds_a_delivery_claimed_after_the_pause(env):
    # Given a paused campaign and one of its deliveries still queued (it raced the pause)
    _customers(env, 1)
    cid = _create(env)
    with env.app.session() as s:
        campaigns.send(s, env.settings, cid)
    campaign_actors.fan_out_batch(env.app, cid)
    with env.app.session() as s:
        campaigns.pause(s, cid)
        s.execute(update(Delivery).where(Delivery.campaign_id == cid).values(status=DeliveryStatus.queued))
    did = _deliveries(env, cid)[0].id
    # When a worker processes it
    outcome = delivery_service.process(env.app, did)
    # Then it is held, not sent
    assert outcome.status == "held" and memory.outbox() == []


def test_cancel_stops_every_unsent_mail(env):
    _customers(env, 4)
    cid = _create(env)
    with env.app.session() as s:
        campaigns.send(s, env.settings, cid)
    while campaign_actors.fan_out_batch(env.app, cid):
        pass
    with env.app.session() as s:
        assert campaigns.cancel(s, cid) == 4
    env.drain()
    assert memory.outbox() == []
    with env.app.session() as s:
        f = reports.figures(s, cid)
    assert f.cancelled == 4 and f.status == "cancelled"


def test_consent_withdrawn_after_fan_out_is_honoured_at_send_time(env):
    ids = _customers(env, 2)
    cid = _create(env)
    with env.app.session() as s:
        campaigns.send(s, env.settings, cid)
    while campaign_actors.fan_out_batch(env.app, cid):
        pass
    with env.app.session() as s:
        consent.append(s, env.settings, customer=s.get(Customer, ids[0]), purpose="newsletter",
                       action="withdrawn", source="unsubscribe_link")
    env.drain()
    assert _recipients() == ["user1@example.com"]
    with env.app.session() as s:
        assert reports.figures(s, cid).skipped == 1


def test_frequency_cap_skips_and_counts(env):
    env.app.settings = env.settings = env.settings.replace(frequency_cap=1)
    _customers(env, 3)
    first = _create(env)
    _send(env, first)
    env.drain()
    assert len(memory.outbox()) == 3
    second = _create(env, name="Again")
    _send(env, second)
    env.drain()
    assert len(memory.outbox()) == 3
    with env.app.session() as s:
        f = reports.figures(s, second)
    assert (f.skipped, f.frequency_capped, f.sent) == (3, 3, 0)


def test_send_at_in_the_future_waits_and_then_starts(env):
    _customers(env, 2)
    cid = _create(env, send_at=utcnow() + timedelta(hours=2))
    with env.app.session() as s:
        assert campaigns.send(s, env.settings, cid).status is CampaignStatus.scheduled
    campaign_actors.sweep_hook(env.app)
    assert _status(env, cid) is CampaignStatus.scheduled
    with env.app.session() as s:
        s.execute(update(Campaign).where(Campaign.id == cid).values(send_at=utcnow() - timedelta(seconds=1)))
    campaign_actors.sweep_hook(env.app)
    env.drain()
    assert len(memory.outbox()) == 2


# -- local time -----------------------------------------------------------------------------------
def test_local_time_schedules_each_recipient_at_their_own_ten_oclock(env):
    zones = ["Asia/Taipei", "America/New_York", None, "Not/AZone"]
    with env.app.session() as s:
        for i, tz in enumerate(zones):
            add_customer(s, env.settings, f"tz{i}@example.com", timezone=tz)
    cid = _create(env, local_time="10:00")
    with env.app.session() as s:
        c = campaigns.send(s, env.settings, cid)
        started = c.started_at
    while campaign_actors.fan_out_batch(env.app, cid):
        pass
    ds = {d.to_address: d for d in _deliveries(env, cid)}
    for i, tz in enumerate(zones):
        d = ds[f"tz{i}@example.com"]
        assert d.status is DeliveryStatus.scheduled
        local = d.send_after.astimezone(ZoneInfo(tz if tz in ("Asia/Taipei", "America/New_York")
                                                 else env.settings.default_timezone))
        assert (local.hour, local.minute) == (10, 0)
        assert started <= d.send_after < started + timedelta(hours=24)
    # Nothing is sent before its time (their messages wait in the broker with a matching delay)
    assert env.broker.queues["bulk.DQ"].qsize() > 0
    assert {delivery_service.process(env.app, d.id).status for d in ds.values()} == {"scheduled"}
    assert memory.outbox() == []
    # When the clock passes everyone's 10:00, even with the delayed messages lost, the
    # sweeper enqueues the due rows from the database and they go out
    env.broker.flush_all()
    with env.app.session() as s:
        s.execute(update(Delivery).where(Delivery.campaign_id == cid)
                  .values(send_after=utcnow() - timedelta(seconds=1)))
    from mailer.delivery import sweeper

    sweeper.sweep(env.app, SWEEP_HOOKS)
    env.drain()
    assert len(memory.outbox()) == 4


@pytest.mark.parametrize("start,zone,expected", [
    ("2026-03-08T05:00:00+00:00", "America/New_York", "2026-03-08T14:00:00+00:00"),  # DST starts that day
    ("2026-11-23T09:59:00+00:00", "UTC", "2026-11-23T10:00:00+00:00"),
    ("2026-11-23T10:01:00+00:00", "UTC", "2026-11-24T10:00:00+00:00"),
    ("2026-11-23T01:00:00+00:00", "Asia/Taipei", "2026-11-23T02:00:00+00:00"),
])
def test_next_local_time(start, zone, expected):
    got = campaigns.next_local_time(datetime.fromisoformat(start), "10:00", zone, make_settings())
    assert got == datetime.fromisoformat(expected)
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)


# -- preview --------------------------------------------------------------------------------------
def test_preview_renders_in_the_recipients_language(env):
    with env.app.session() as s:
        add_customer(s, env.settings, "ola@example.com", locale="pl", first_name="Ola")
    cid = _create(env, subjects=campaigns.parse_subjects(["pl=Dla {{ first_name }}"]))
    with env.app.session() as s:
        p = campaigns.preview(s, env.settings, env.app.renderer, cid, "ola@example.com")
    assert p.locale == "pl" and p.subject == "Dla Ola"
    assert "Cześć Ola" in p.html and "/u/" in p.html


def test_a_segment_broken_after_creation_pauses_the_campaign(env, tmp_path, caplog):
    # Given a campaign created against a segment file that is then broken
    segments_dir = tmp_path / "segments"
    segments_dir.mkdir()
    (segments_dir / "subscribers.toml").write_text('purpose = "newsletter"\n', encoding="utf-8")
    env.app.settings = env.settings = env.settings.replace(segments_dir=segments_dir)
    _customers(env, 2)
    cid = _create(env, segment="subscribers")
    with env.app.session() as s:
        campaigns.send(s, env.settings, cid)
    (segments_dir / "subscribers.toml").write_text('purpose = "newsletter"\nwhere = { colour = "red" }\n',
                                                   encoding="utf-8")
    # When the fan-out runs
    assert campaign_actors.fan_out_batch(env.app, cid) is False
    # Then the campaign is paused with an error naming the segment, and nothing was sent
    assert _status(env, cid) is CampaignStatus.paused
    assert "subscribers" in caplog.text and "mailer campaign resume" in caplog.text
    assert _deliveries(env, cid) == []
