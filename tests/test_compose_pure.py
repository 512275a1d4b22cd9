"""Composition is pure: a mail is composed from plain values, with no database at all.

The send path loads what one mail needs (customer, campaign options, tracking
permission, restock products still wanted) into a :class:`MailContext`; these tests
build that value by hand, forbid every way of reaching a database (no engine, no
session can be made), and check the headers, links and subject of what comes out.
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from urllib.parse import unquote

import pytest
import sqlalchemy.engine
import sqlalchemy.orm

from mailer import db
from mailer.clock import utcnow
from mailer.delivery.compose import compose, delivery_header, message_id, return_path
from mailer.delivery.mail import CampaignOptions, MailContext, Recipient
from mailer.delivery.process import products_still_wanted
from mailer.message.dkim import Signer
from mailer.models import Delivery
from mailer.rendering import Renderer
from mailer.tracking import service as tracking
from tests.campaign_support import NEWS_KIND, SHOP_URL, newsletter_templates
from tests.conftest import make_settings

#: Nothing listens here: a composition that tried this URL would fail.
UNREACHABLE_DB_URL = "postgresql+psycopg://nobody@127.0.0.1:9/no_such_db"


class DatabaseTouched(AssertionError):
    """Composition reached for a database."""


@pytest.fixture
def no_database(monkeypatch):
    """Every way to a database raises: new engines, connections of existing engines, sessions."""

    def refuse(*_args, **_kwargs):
        raise DatabaseTouched("composition must not use the database")

    monkeypatch.setattr(db, "make_engine", refuse)
    monkeypatch.setattr(sqlalchemy.engine.Engine, "connect", refuse)
    monkeypatch.setattr(sqlalchemy.orm.Session, "__init__", refuse)


@pytest.fixture
def parts(tmp_path):
    settings = make_settings(database_url=UNREACHABLE_DB_URL, templates_dir=newsletter_templates(tmp_path),
                             base_url="https://mail.shop.example", from_address="Shop <news@shop.example>",
                             bounce_domain="bounces.shop.example")
    return settings, Renderer(settings), Signer.from_settings(settings)


def _campaign_mail(*, tracking_allowed: bool, tracking_on: bool = True) -> MailContext:
    return MailContext(id=42, kind=NEWS_KIND, locale="en", to_address="ann@example.com", purpose="newsletter",
                       data={}, campaign_id=7, customer_id=3, created_at=utcnow(),
                       customer=Recipient(id=3, first_name="Ann", last_name="Lee", currency="EUR"),
                       campaign=CampaignOptions(id=7, tracking=tracking_on,
                                                subjects={"en": "Spring for {{ first_name }}"},
                                                data={"headline": "Spring sale"}),
                       tracking_allowed=tracking_allowed)


def _parse(composed):
    msg = message_from_bytes(composed.message, policy=policy.default)
    return msg, msg.get_body(("html",)).get_content()


def _tokens(html: str, path: str) -> list[str]:
    return [unquote(t) for t in re.findall(rf"https://mail\.shop\.example{path}([A-Za-z0-9._~%-]+)", html)]


def test_the_guard_refuses_a_database(no_database, parts):
    """Given the no-database guard, when anything opens a session, then it is refused (so the
    tests below would notice a composition that reads the database)."""
    settings, _, _ = parts
    with pytest.raises(DatabaseTouched), db.session_scope(settings):
        pass


def test_a_tracked_campaign_mail_composes_from_plain_values(no_database, parts):
    """Given a campaign mail as plain values (tracking on, the customer permits it), when composed
    with no database, then subject, addresses, list headers and tracked links are all there."""
    settings, renderer, signer = parts
    mail = _campaign_mail(tracking_allowed=True)

    composed = compose(settings, renderer, signer, mail)

    msg, html = _parse(composed)
    # Then the subject is the campaign's, rendered for the recipient
    assert msg["Subject"] == "Spring for Ann"
    assert "Spring sale" in html
    assert msg["To"].addresses[0].display_name == "Ann Lee"
    assert msg["Message-ID"] == composed.message_id == message_id(settings, 42)
    assert composed.envelope_from == return_path(settings, 42) == f"bounces+{delivery_header(settings, 42)}@bounces.shop.example"
    assert re.fullmatch(r"bounces\+42\.[0-9a-f]{16}@bounces\.shop\.example", composed.envelope_from)
    assert msg["X-Mailer-Delivery"] == delivery_header(settings, 42) and msg["X-Mailer-Kind"] == NEWS_KIND
    assert msg["X-Mailer-Delivery"].startswith("42.")
    assert msg["Feedback-ID"] == "c7:newsletter/test_news:marketing:shop.example"
    assert msg["List-Id"] == '"Northwind Shop newsletter" <newsletter.shop.example>'
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # And the one-click unsubscribe link is signed for this delivery, customer and purpose
    (unsubscribe,) = re.findall(r"<https://mail\.shop\.example/u/([^>]+)>", msg["List-Unsubscribe"])
    link = tracking.read(settings, tracking.UNSUBSCRIBE, unsubscribe)
    assert (link.delivery_id, link.customer_id, link.purpose) == (42, 3, "newsletter")
    # And the shop link goes through click tracking, and an open pixel is in the HTML
    clicks = [tracking.read(settings, tracking.CLICK, t) for t in _tokens(html, "/t/c/")]
    assert [(c.delivery_id, c.url) for c in clicks] == [(42, SHOP_URL)]
    assert 'href="' + SHOP_URL not in html
    assert _tokens(html, "/t/o/"), "no open pixel"


def test_without_tracking_permission_no_link_is_tracked(no_database, parts):
    """Given the same campaign mail but the customer does not permit tracking (or the campaign
    has tracking off), when composed, then links are untouched and there is no open pixel,
    while the unsubscribe headers stay."""
    settings, renderer, signer = parts
    for mail in (_campaign_mail(tracking_allowed=False), _campaign_mail(tracking_allowed=True, tracking_on=False)):
        msg, html = _parse(compose(settings, renderer, signer, mail))

        assert f'href="{SHOP_URL}"' in html
        assert not _tokens(html, "/t/c/") and not _tokens(html, "/t/o/")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_notice_is_transactional_and_composes_the_same_twice(no_database, parts):
    """Given a transactional notice as plain values (no customer record), when composed twice,
    then it carries no list headers, and both compositions agree on Message-ID, subject and links."""
    settings, renderer, signer = parts
    mail = MailContext(id=9, kind="order_delayed", locale="en", to_address="bob@example.org",
                       purpose="transactional", data={"order_number": "7", "new_eta": "2026-12-01"},
                       created_at=utcnow())

    first, second = (compose(settings, renderer, signer, mail) for _ in range(2))

    msg, html = _parse(first)
    assert "List-Unsubscribe" not in msg and "List-Id" not in msg
    assert msg["Feedback-ID"] == "order_delayed:order_delayed:transactional:shop.example"
    assert "7" in msg["Subject"]
    again, html_again = _parse(second)
    assert (again["Message-ID"], again["Subject"], html_again) == (msg["Message-ID"], msg["Subject"], html)


def test_mail_context_of_copies_plain_values_from_unsaved_models(no_database):
    """Given an unsaved delivery (never in a session), when turned into a MailContext, then it
    holds the delivery's values and is frozen."""
    d = Delivery(id=5, kind=NEWS_KIND, campaign_id=None, customer_id=None, to_address="x@example.com",
                 to_hash="h", locale="pl", data={"headline": "Hi"}, purpose="newsletter", created_at=utcnow())

    mail = MailContext.of(d, campaign=None)

    assert (mail.id, mail.kind, mail.locale, mail.to_address, mail.purpose, mail.data) == \
        (5, NEWS_KIND, "pl", "x@example.com", "newsletter", {"headline": "Hi"})
    assert mail.customer is None and mail.tracking_allowed is False
    with pytest.raises(AttributeError):
        mail.id = 6  # type: ignore[misc]


def test_a_merged_restock_mail_carries_only_the_products_still_wanted():
    """Given a merged back-in-stock delivery for two products, when only one restock request is
    still current, then this send carries that product alone and the delivery keeps both;
    when all are current (or consent was not consulted), the data is unchanged."""
    products = [{"sku": "A-1", "name": "Kettle"}, {"sku": "B-2", "name": "Teapot"}]
    d = Delivery(id=8, kind="back_in_stock", to_address="x@example.com", to_hash="h", locale="en",
                 data={"sku": "A-1", "products": products}, purpose="restock:A-1")

    data = products_still_wanted(d, ("restock:B-2",))

    assert data["products"] == [products[1]] and data["sku"] == "B-2"
    assert d.data["products"] == products
    assert products_still_wanted(d, ("restock:A-1", "restock:B-2")) is d.data
    assert products_still_wanted(d, None) is d.data


@pytest.mark.parametrize("html, pixel_before", [
    ("<html><body><p>x</p></body></html>", "</body></html>"),
    ("<html><BODY><p>x</p></BODY ></html>", "</BODY ></html>"),
    # a later upper-case end after a lower-case one: the last wins, as before
    ("<body><p>x</p></body><p>y</p></BODY>", "</BODY>"),
    # "</bodyx" is not an end tag; the real one earlier is
    ("<body><p>x</p></body>\n<p>y</bodyx", "</body>\n<p>y</bodyx"),
    ("<p>no body at all</p>", None),
])
def test_the_open_pixel_goes_before_the_last_body_end_tag(html, pixel_before):
    from mailer.delivery.personalize import after_render, pixel_html
    from mailer.rendering import Rendered

    # Given a rendered mail and an open pixel URL
    rendered = Rendered(subject="s", preheader="", html=html, text="t", locale="en")
    url = "https://mail.shop.example/t/o/abc.gif"
    # When the pixel is placed
    out = after_render({"open_pixel_url": url}, rendered).html
    # Then it sits right before the last </body> (any case), or at the end without one
    expected = html + pixel_html(url) if pixel_before is None else \
        html[:html.rindex(pixel_before)] + pixel_html(url) + pixel_before
    assert out == expected
