"""The marketers' console pages: campaigns (list, create, preview, test send, confirmations,
progress, report), segments, templates and automations, on both databases; roles, audit, escaping."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from mailer.audit import entries
from mailer.campaigns import fanout
from mailer.clock import utcnow
from mailer.models import Campaign, CampaignStatus, Delivery, DeliveryStatus
from mailer.worker.actors import setup
from tests.campaign_support import add_customer

NEWS = "newsletter/product_launch"


@pytest.fixture
def shop(app):
    """The app with customers in en (2), pl (2) and ko (1) who agreed to the newsletter."""
    with app.session() as s:
        for i, loc in enumerate(("en", "en", "pl", "pl", "ko")):
            add_customer(s, app.settings, f"c{i}@example.com", locale=loc, first_name=f"Name{i}")
    return app


def _form(client, **fields) -> dict:
    return {"csrf_token": client.csrf_token, **fields}


def _create(client, **fields):
    data = {"name": "Spring", "template": NEWS, "segment": "newsletter_all", "when": "now", "tracking": "on"}
    data.update(fields)
    return client.post("/console/campaigns", data=_form(client, **data), follow_redirects=False)


def test_create_form_shows_the_segment_count_sample_and_fallback_warning(shop, console_as):
    client = console_as("marketer")
    # Given the create form for the newsletter segment
    page = client.get("/console/campaigns/new?segment=newsletter_all")
    assert page.status_code == 200
    # Then it shows the live count and a sample member
    assert re.search(r'id="segment-count">5<', page.text)
    assert "c0@example.com" in page.text
    # When subjects are typed for en and pl only (the panel htmx fetches)
    panel = client.get("/console/campaigns/new/segment", params={"segment": "newsletter_all", "template": NEWS,
                                                                 "subject_en": "Hello", "subject_pl": "Cześć"})
    # Then ko is named as falling back, en and pl are not
    warning = re.search(r'id="fallback-warning">(.*?)</div>', panel.text, re.S).group(1)
    assert "ko (" in warning and "en (" not in warning and "pl (" not in warning


def test_create_refuses_bad_subject_naming_the_field_and_stores_nothing(shop, console_as):
    client = console_as("marketer")
    r = _create(client, subject_pl="{{ ''.__class__ }}")
    assert r.status_code == 422
    assert 'id="err-subject_pl"' in r.text
    r = _create(client, name="")
    assert r.status_code == 422 and 'id="err-name"' in r.text
    r = _create(client, when="at", send_at="")
    assert r.status_code == 422 and 'id="err-send_at"' in r.text
    with shop.session() as s:
        assert s.execute(select(Campaign)).first() is None


def test_create_preview_test_send_send_and_report(shop, console_as):
    setup(shop.settings)  # a stub broker for the enqueues
    client = console_as("marketer")
    # When a campaign is created with subjects in two locales
    r = _create(client, subject_en="Spring is here", subject_pl="Wiosna", preheader_pl="Tylko teraz")
    assert r.status_code == 303, r.text
    cid = int(r.headers["location"].split("/")[3].split("?")[0])
    page = client.get(f"/console/campaigns/{cid}?created=1")
    assert page.status_code == 200 and "Spring" in page.text
    # Then its preview in pl shows the Polish subject, both frames and the text part
    pv = client.get(f"/console/campaigns/{cid}/preview", params={"locale": "pl"})
    assert pv.status_code == 200
    assert re.search(r'id="preview-subject">Wiosna<', pv.text)
    assert 'class="w375"' in pv.text and 'class="w600"' in pv.text and 'sandbox=""' in pv.text
    frame = client.get(f"/console/frames/campaigns/{cid}", params={"locale": "pl"})
    assert frame.status_code == 200 and "<html" in frame.text.lower()
    assert "sandbox" in frame.headers["content-security-policy"]
    assert "'unsafe-inline'" not in client.get("/console/campaigns").headers["content-security-policy"]
    # When it is test-sent to a seed
    r = client.post(f"/console/campaigns/{cid}/test-send",
                    data=_form(client, seeds="seed@example.com", locale="pl"), follow_redirects=False)
    assert r.status_code == 303 and "tested=1" in r.headers["location"]
    # Then a confirmation states the count before sending
    conf = client.get(f"/console/campaigns/{cid}/confirm/send")
    assert re.search(r'id="confirm-count">\s*[^<]*\b5\b', conf.text)
    r = client.post(f"/console/campaigns/{cid}/send", data=_form(client, count="5"), follow_redirects=False)
    assert r.status_code == 303
    with shop.session() as s:
        assert s.get(Campaign, cid).status is CampaignStatus.running
    while fanout.fan_out_batch(shop, cid):
        pass
    with shop.session() as s:
        for d in s.execute(select(Delivery).where(Delivery.campaign_id == cid)).scalars():
            d.status = DeliveryStatus.sent
    # Then the progress partial and the report count the five mails, not the test send
    prog = client.get(f"/console/campaigns/{cid}/progress")
    assert re.search(r'id="fig-sent">5<', prog.text)
    rep = client.get(f"/console/campaigns/{cid}/report")
    assert rep.status_code == 200 and re.search(r'id="report-sent">5<', rep.text)
    assert "<svg" in rep.text  # mails sent by locale
    # And the audit log has each action
    with shop.session() as s:
        actions = [e.action for e in entries(s)]
    assert {"campaign.create", "campaign.test_send", "campaign.send"} <= set(actions)


def test_pause_resume_cancel_behind_confirmations(shop, console_as):
    setup(shop.settings)
    client = console_as("marketer")
    cid = int(_create(client).headers["location"].split("/")[3].split("?")[0])
    client.post(f"/console/campaigns/{cid}/send", data=_form(client))
    fanout.fan_out_batch(shop, cid)
    conf = client.get(f"/console/campaigns/{cid}/confirm/pause")
    assert re.search(r'id="confirm-count">\s*[^<]*\b5\b', conf.text)
    assert client.post(f"/console/campaigns/{cid}/pause", data=_form(client), follow_redirects=False).status_code == 303
    conf = client.get(f"/console/campaigns/{cid}/confirm/resume")
    assert re.search(r'id="confirm-count">\s*[^<]*\b5\b', conf.text)
    assert client.post(f"/console/campaigns/{cid}/resume", data=_form(client), follow_redirects=False).status_code == 303
    assert client.post(f"/console/campaigns/{cid}/cancel", data=_form(client), follow_redirects=False).status_code == 303
    # A second cancel is refused with the reason, not a 5xx
    again = client.post(f"/console/campaigns/{cid}/cancel", data=_form(client))
    assert again.status_code == 409 and "already cancelled" in again.text
    with shop.session() as s:
        assert s.get(Campaign, cid).status is CampaignStatus.cancelled
        actions = [e.action for e in entries(s)]
    assert {"campaign.pause", "campaign.resume", "campaign.cancel"} <= set(actions)


def test_viewer_reads_but_cannot_create_or_send(shop, console_as):
    client = console_as("viewer")
    assert client.get("/console/campaigns").status_code == 200
    assert client.get("/console/segments").status_code == 200
    assert client.get("/console/campaigns/new").status_code == 403
    assert _create(client).status_code == 403


def test_post_without_csrf_is_refused(shop, console_as):
    client = console_as("marketer")
    r = client.post("/console/campaigns", data={"name": "x"}, follow_redirects=False)
    assert r.status_code == 403


def test_segments_templates_and_automations_pages(shop, console_as):
    client = console_as("marketer")
    seg = client.get("/console/segments")
    assert seg.status_code == 200 and "newsletter_all" in seg.text
    one = client.get("/console/segments/newsletter_all")
    assert re.search(r'id="segment-count">5<', one.text) and "c0@example.com" in one.text
    assert client.get("/console/segments/nope").status_code == 404
    tpl = client.get("/console/templates", params={"kind": NEWS, "locale": "pl"})
    assert tpl.status_code == 200 and 'id="check-result"' in tpl.text and "/console/frames/templates" in tpl.text
    assert client.get("/console/frames/templates", params={"kind": NEWS, "locale": "pl"}).status_code == 200
    auto = client.get("/console/automations")
    assert auto.status_code == 200 and "abandoned_cart" in auto.text


def test_cancel_one_pending_automation_send(shop, console_as):
    client = console_as("marketer")
    with shop.session() as s:
        d = Delivery(idempotency_key="auto:test:1", kind="abandoned_cart", to_address="c0@example.com",
                     to_hash="x" * 64, locale="en", data={}, purpose="transactional",
                     status=DeliveryStatus.scheduled, automation="abandoned_cart",
                     send_after=utcnow())
        s.add(d)
        s.flush()
        did = d.id
    page = client.get("/console/automations")
    assert f"/console/automations/pending/{did}/cancel" in page.text
    r = client.post(f"/console/automations/pending/{did}/cancel", data=_form(client), follow_redirects=False)
    assert r.status_code == 303 and f"cancelled={did}" in r.headers["location"]
    with shop.session() as s:
        assert s.get(Delivery, did).status is DeliveryStatus.cancelled
    r = client.post(f"/console/automations/pending/{did}/cancel", data=_form(client), follow_redirects=False)
    assert f"gone={did}" in r.headers["location"]
