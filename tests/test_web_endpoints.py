"""The HTTP app through the real ASGI stack: tracking, one-click unsubscribe, preferences, CSAT.

Mail is composed by the real delivery path (memory transport), and the links are taken
from the composed message, as a recipient's mail client would.
"""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from mailer.app import App, set_app
from mailer.clock import utcnow
from mailer.delivery import process as delivery_service
from mailer.models import (
    Campaign,
    ConsentEvent,
    ConsentSource,
    ConsentState,
    CsatRating,
    Delivery,
    TrackingEvent,
    TrackingKind,
)
from mailer.notices import trigger as notices
from mailer.tracking import service as tracking
from mailer.transport import memory
from mailer.web.app import create_app
from tests.campaign_support import NEWS_KIND, SHOP_URL, add_customer, newsletter_templates
from tests.conftest import make_settings


@pytest.fixture
def web(db_url, tmp_path):
    """A mailer App (memory transport) and a TestClient on its ASGI app."""
    memory.clear()
    settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path),
                             base_url="http://testserver", machine_open_window_s=5)
    app = App(settings)
    previous = set_app(app)
    client = TestClient(create_app(app=app), follow_redirects=False)
    client.mailer = app
    yield client
    app.close()
    set_app(previous)


def _campaign_mail(web, email="ann@example.com", locale="en", *, tracking_on=True):
    """A customer with newsletter consent and one sent campaign mail; returns (delivery id, message)."""
    app = web.mailer
    with app.session() as s:
        customer = add_customer(s, app.settings, email, locale=locale)
        campaign = Campaign(name="Spring", template=NEWS_KIND, segment="all", purpose="newsletter",
                            subjects={}, data={"headline": "Spring sale"}, tracking=tracking_on)
        s.add(campaign)
        s.flush()
        customer_id, campaign_id = customer.id, campaign.id
    created = notices.create(app, NEWS_KIND, customer_id=customer_id, data={"headline": "Spring sale"},
                             key=f"test:{email}")
    with app.session() as s:
        s.execute(update(Delivery).where(Delivery.id == created.delivery_id).values(campaign_id=campaign_id))
    before = len(memory.outbox())
    outcome = delivery_service.process(app, created.delivery_id)
    assert outcome.status == "sent", outcome
    return created.delivery_id, memory.outbox()[before].message


def _links(message) -> list[str]:
    html = message.get_body(("html",)).get_content()
    return re.findall(r'href="([^"]+)"', html) + re.findall(r'src="([^"]+)"', html)


def _path(url: str) -> str:
    return urlsplit(url).path


def _events(web, kind=None):
    with web.mailer.session() as s:
        q = select(TrackingEvent)
        if kind is not None:
            q = q.where(TrackingEvent.kind == kind)
        return list(s.execute(q).scalars())


def _granted(web, customer_email="ann@example.com", purpose="newsletter") -> bool:
    from mailer.models import Customer

    with web.mailer.session() as s:
        cid = s.execute(select(Customer.id).where(Customer.email == customer_email)).scalar_one()
        return bool(s.execute(select(ConsentState.granted).where(ConsentState.customer_id == cid,
                                                                 ConsentState.purpose == purpose))
                    .scalar_one_or_none())


def _tamper(token: str) -> str:
    body, mac = token.split(".")
    return body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac


# -- headers ------------------------------------------------------------------------------------
def test_marketing_mail_carries_one_click_headers_list_id_feedback_id_and_footer_links(web):
    # Given a sent campaign mail
    delivery_id, msg = _campaign_mail(web)
    # Then it carries RFC 8058 headers with an https-style link and a mailto
    lu = msg["List-Unsubscribe"]
    assert re.fullmatch(r"<http://testserver/u/[^>]+>, <mailto:unsubscribe@[^>]+>", lu), lu
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"].endswith("<newsletter.example.com>")
    assert msg["Feedback-ID"].startswith("c") and ":marketing:" in msg["Feedback-ID"]
    with web.mailer.session() as s:
        assert msg["Message-ID"] == s.get(Delivery, delivery_id).message_id
    # And the body shows the same unsubscribe link, the preferences link and the postal address
    html = msg.get_body(("html",)).get_content()
    unsubscribe = lu.split(">")[0][1:]
    assert unsubscribe in html
    assert "/preferences/" in html
    assert web.mailer.settings.store_address in html


def test_transactional_mail_has_no_unsubscribe_headers(web):
    app = web.mailer
    created = notices.create(app, "order_delayed", to="tx@example.com",
                             data={"order_number": "1001", "new_eta": "2026-12-01"})
    delivery_service.process(app, created.delivery_id)
    msg = memory.outbox()[-1].message
    assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
    assert ":transactional:" in msg["Feedback-ID"]


# -- opens --------------------------------------------------------------------------------------
def _pixel(msg) -> str:
    return next(u for u in _links(msg) if "/t/o/" in u)


def test_open_pixel_records_human_and_machine_opens(web):
    delivery_id, msg = _campaign_mail(web)
    pixel = _path(_pixel(msg))
    # Given the mail was delivered a while ago
    with web.mailer.session() as s:
        s.execute(update(Delivery).where(Delivery.id == delivery_id).values(sent_at=utcnow() - timedelta(hours=1)))
    # When a person's mail client, Gmail's image proxy and Apple's privacy proxy fetch the pixel
    human = web.get(pixel, headers={"User-Agent": "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Thunderbird"})
    gmail = web.get(pixel, headers={"User-Agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
                                                  "(via ggpht.com GoogleImageProxy)"})
    apple = web.get(pixel, headers={"User-Agent": "Mozilla/5.0"})
    # Then each gets the GIF, uncached, and only the first is a human open
    for r in (human, gmail, apple):
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
        assert r.content.startswith(b"GIF89a") and "no-store" in r.headers["cache-control"]
        assert "set-cookie" not in r.headers
    assert [e.kind for e in _events(web)] == [TrackingKind.open, TrackingKind.machine_open,
                                               TrackingKind.machine_open]


def test_open_within_seconds_of_delivery_is_a_machine_open(web):
    # Given a mail sent just now (the test mail)
    _, msg = _campaign_mail(web)
    # When the pixel is fetched immediately by an ordinary browser
    r = web.get(_path(_pixel(msg)), headers={"User-Agent": "Mozilla/5.0 (X11; Linux) Firefox/128.0"})
    # Then it is recorded as a machine open
    assert r.status_code == 200
    assert [e.kind for e in _events(web)] == [TrackingKind.machine_open]


def test_tracking_off_campaign_has_no_pixel_and_plain_links(web):
    _, msg = _campaign_mail(web, tracking_on=False)
    links = _links(msg)
    assert not any("/t/o/" in u or "/t/c/" in u for u in links)
    assert SHOP_URL.replace("&", "&amp;") in msg.get_body(("html",)).get_content() or SHOP_URL in links


def test_tampered_open_token_records_nothing(web):
    _, msg = _campaign_mail(web)
    token = _path(_pixel(msg)).rsplit("/", 1)[1][:-len(".gif")]
    r = web.get(f"/t/o/{_tamper(token)}.gif")
    assert r.status_code == 404
    assert _events(web) == []


# -- clicks -------------------------------------------------------------------------------------
def _click_link(web, delivery_id, url=SHOP_URL) -> str:
    with web.mailer.session() as s:
        d = s.get(Delivery, delivery_id)
        return _path(tracking.click_url(web.mailer.settings, d, url))


def test_click_records_and_redirects_only_to_the_signed_url(web):
    delivery_id, _ = _campaign_mail(web)
    link = _click_link(web, delivery_id)
    # When the link is followed, also with an attempt to smuggle another target
    r = web.get(link)
    r2 = web.get(link + "?url=https://evil.example.net/&next=https://evil.example.net/")
    # Then both redirect to the signed URL and both clicks are recorded
    assert r.status_code == 302 and r.headers["location"] == SHOP_URL
    assert r2.status_code == 302 and r2.headers["location"] == SHOP_URL
    clicks = _events(web, TrackingKind.click)
    assert [c.url for c in clicks] == [SHOP_URL, SHOP_URL]


def test_open_redirect_attempts_are_refused(web):
    delivery_id, _ = _campaign_mail(web)
    link = _click_link(web, delivery_id)
    token = link.rsplit("/", 1)[1]
    # A token whose payload was changed to another URL, a token signed for another purpose,
    # and a javascript: target can never redirect anywhere.
    import base64
    import json

    body, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["u"] = "https://evil.example.net/"
    forged = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
                                      ).rstrip(b"=").decode() + "." + mac
    with web.mailer.session() as s:
        other_purpose = tracking.unsubscribe_token(web.mailer.settings, s.get(Delivery, delivery_id))
    from mailer import tokens

    js = tokens.sign(web.mailer.settings.secret_key, tracking.CLICK, {"d": delivery_id, "u": "javascript:alert(1)"})
    for bad in (forged, other_purpose, js, "not-a-token", _tamper(token)):
        r = web.get(f"/t/c/{bad}")
        assert r.status_code == 404, bad
        assert "location" not in r.headers
    assert _events(web, TrackingKind.click) == []


# -- unsubscribe --------------------------------------------------------------------------------
def _unsubscribe_path(msg) -> str:
    return _path(msg["List-Unsubscribe"].split(">")[0][1:])


def test_get_never_unsubscribes_and_shows_a_localized_confirmation(web):
    _, msg = _campaign_mail(web, email="ola@example.com", locale="pl")
    r = web.get(_unsubscribe_path(msg))
    assert r.status_code == 200
    assert 'lang="pl"' in r.text and "Wypisz mnie" in r.text
    assert 'name="List-Unsubscribe" value="One-Click"' in r.text
    assert _granted(web, "ola@example.com")


def test_one_click_post_unsubscribes_at_once_without_redirect_or_cookie(web):
    delivery_id, msg = _campaign_mail(web)
    r = web.post(_unsubscribe_path(msg), data={"List-Unsubscribe": "One-Click"},
                 headers={"User-Agent": "GoogleMail-OneClick"})
    # Then: 200 (no redirect), no cookie, consent withdrawn with source unsubscribe_link
    assert r.status_code == 200
    assert "set-cookie" not in r.headers and "location" not in r.headers
    assert not _granted(web)
    with web.mailer.session() as s:
        ev = s.execute(select(ConsentEvent).order_by(ConsentEvent.seq.desc()).limit(1)).scalar_one()
        assert ev.action.value == "withdrawn" and ev.source is ConsentSource.unsubscribe_link
        assert ev.purpose == "newsletter" and ev.user_agent_digest is not None
    assert len(_events(web, TrackingKind.unsubscribe)) == 1
    # And posting again changes nothing more
    again = web.post(_unsubscribe_path(msg), data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    with web.mailer.session() as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)
                         .where(ConsentEvent.action == "withdrawn")).scalar_one() == 1


def test_unsubscribe_takes_effect_for_mail_not_yet_sent(web):
    # Given a mail sent, and a second one queued but not yet sent
    _, msg = _campaign_mail(web)
    app = web.mailer
    with app.session() as s:
        from mailer.models import Customer

        cid = s.execute(select(Customer.id).where(Customer.email == "ann@example.com")).scalar_one()
    pending = notices.create(app, NEWS_KIND, customer_id=cid, data={"headline": "Next"}, key="test:next")
    # When the recipient unsubscribes by one click
    web.post(_unsubscribe_path(msg), data={"List-Unsubscribe": "One-Click"})
    # Then the queued mail is skipped at send time
    sent_before = len(memory.outbox())
    outcome = delivery_service.process(app, pending.delivery_id)
    assert outcome.status == "skipped" and "consent" in outcome.detail
    assert len(memory.outbox()) == sent_before


def test_the_page_button_posts_the_same_one_click_body(web):
    _, msg = _campaign_mail(web)
    page = web.get(_unsubscribe_path(msg)).text
    action = re.search(r'<form method="post" action="([^"]+)"', page).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]+)"', page))
    r = web.post(action, data=fields)
    assert r.status_code == 200 and not _granted(web)


def test_tampered_or_wrong_body_unsubscribe_changes_nothing(web):
    _, msg = _campaign_mail(web)
    path = _unsubscribe_path(msg)
    token = path.rsplit("/", 1)[1]
    assert web.post(f"/u/{_tamper(token)}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert web.post(path, data={"List-Unsubscribe": "Yes"}).status_code == 400
    assert web.post(path).status_code == 400
    assert web.get(f"/u/{_tamper(token)}").status_code == 404
    assert _granted(web)


def test_expired_unsubscribe_token_changes_nothing(web):
    delivery_id, _ = _campaign_mail(web)
    with web.mailer.session() as s:
        d = s.get(Delivery, delivery_id)
        d.created_at = utcnow() - timedelta(days=web.mailer.settings.token_ttl_days + 1)
        token = tracking.unsubscribe_token(web.mailer.settings, d)
        s.rollback()
    r = web.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 404
    assert _granted(web)


# -- preferences --------------------------------------------------------------------------------
def test_preference_centre_shows_and_changes_consent_per_purpose(web):
    _, msg = _campaign_mail(web, email="mei@example.com", locale="zh-TW")
    prefs = next(u for u in _links(msg) if "/preferences/" in u)
    page = web.get(_path(prefs))
    assert page.status_code == 200 and 'lang="zh-TW"' in page.text and "電子報" in page.text
    assert re.search(r'value="newsletter" checked', page.text)
    assert not re.search(r'value="loyalty" checked', page.text)
    # When the customer opts out of the newsletter and into loyalty
    r = web.post(_path(prefs), data={"form": "preferences", "purposes": ["loyalty"]})
    assert r.status_code == 200 and 'value="loyalty" checked' in r.text
    # Then two consent events with source preference_centre were appended
    assert not _granted(web, "mei@example.com", "newsletter")
    assert _granted(web, "mei@example.com", "loyalty")
    with web.mailer.session() as s:
        evs = s.execute(select(ConsentEvent).where(ConsentEvent.source == ConsentSource.preference_centre)
                        .order_by(ConsentEvent.seq)).scalars().all()
        assert sorted((e.purpose, e.action.value) for e in evs) == [("loyalty", "granted"),
                                                                     ("newsletter", "withdrawn")]
        assert all(e.wording_sha256 for e in evs if e.action.value == "granted")
    # And saving the same choices again appends nothing
    web.post(_path(prefs), data={"form": "preferences", "purposes": ["loyalty"]})
    with web.mailer.session() as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)
                         .where(ConsentEvent.source == ConsentSource.preference_centre)).scalar_one() == 2


def test_arabic_pages_are_right_to_left(web):
    _, msg = _campaign_mail(web, email="layla@example.com", locale="ar")
    page = web.get(_unsubscribe_path(msg))
    assert 'dir="rtl"' in page.text and 'lang="ar"' in page.text


def test_tampered_preferences_token_gets_404(web):
    _, msg = _campaign_mail(web)
    prefs = _path(next(u for u in _links(msg) if "/preferences/" in u))
    token = prefs.rsplit("/", 1)[1]
    assert web.get(f"/preferences/{_tamper(token)}").status_code == 404
    assert web.post(f"/preferences/{_tamper(token)}", data={"purposes": []}).status_code == 404
    assert _granted(web)


# -- CSAT ---------------------------------------------------------------------------------------
def test_csat_links_record_one_rating_per_order_last_click_wins(web):
    app = web.mailer
    with app.session() as s:
        customer = add_customer(s, app.settings, "rater@example.com", purposes=())
        cid = customer.id
    links = tracking.csat_urls(app.settings, "A-1001", cid)
    assert len(links["rating_urls"]) == 5
    # When the customer clicks 2, then 5
    assert web.get(_path(links["rating_urls"][1])).status_code == 200
    r = web.get(_path(links["rating_urls"][4]))
    assert r.status_code == 200 and "5 / 5" in r.text
    # Then one row holds the last rating
    with app.session() as s:
        rows = s.execute(select(CsatRating)).scalars().all()
        assert [(x.order_number, x.rating, x.customer_id) for x in rows] == [("A-1001", 5, cid)]
    # And a comment from the comment link attaches to it
    c = web.post(_path(links["comment_url"]), data={"comment": "Fast delivery, thanks!"})
    assert c.status_code == 200
    with app.session() as s:
        assert s.execute(select(CsatRating.comment)).scalar_one() == "Fast delivery, thanks!"


def test_tampered_csat_token_records_nothing(web):
    links = tracking.csat_urls(web.mailer.settings, "A-2", None)
    token = _path(links["rating_urls"][0]).rsplit("/", 1)[1]
    assert web.get(f"/csat/{_tamper(token)}").status_code == 404
    with web.mailer.session() as s:
        assert s.execute(select(func.count()).select_from(CsatRating)).scalar_one() == 0


def test_healthz_and_openapi(web):
    assert web.get("/healthz").json() == {"status": "ok"}
    spec = web.get("/openapi.json").json()
    assert {"/v1/notices", "/u/{token}", "/t/c/{token}", "/t/o/{token}.gif", "/preferences/{token}"} <= set(spec["paths"])


def test_links_in_campaign_mail_are_wrapped_and_lead_to_their_target(web):
    # Given a tracked campaign mail
    _, msg = _campaign_mail(web)
    links = _links(msg)
    tracked = [u for u in links if "/t/c/" in u]
    # Then the shop link is wrapped (unsubscribe and preferences links are not)
    assert len(tracked) == 1 and SHOP_URL not in links
    assert any("/u/" in u for u in links) and any("/preferences/" in u for u in links)
    # And following it records a click and lands on the shop
    r = web.get(_path(tracked[0]))
    assert r.status_code == 302 and r.headers["location"] == SHOP_URL
    assert len(_events(web, TrackingKind.click)) == 1
