"""Headers and links that tell the streams apart: marketing and transactional From, Feedback-ID,
List-Id on the stream's domain, and UTM parameters on campaign links to the shop's own domains."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from mailer.clock import utcnow
from mailer.delivery import utm
from mailer.delivery.compose import compose
from mailer.delivery.mail import CampaignOptions, MailContext, Recipient
from mailer.message.dkim import Signer
from mailer.rendering import Renderer
from mailer.tracking import service as tracking
from tests.campaign_support import NEWS_KIND, newsletter_templates
from tests.conftest import make_settings


@pytest.fixture
def parts(tmp_path):
    settings = make_settings(templates_dir=newsletter_templates(tmp_path), base_url="https://mail.shop.example",
                             from_address="Shop <shop@shop.example>", marketing_from="Shop News <news@news.shop.example>",
                             transactional_from="Shop Orders <orders@orders.shop.example>",
                             shop_domains=("shop.example.com",))
    return settings, Renderer(settings), Signer.from_settings(settings)


def _mail(*, tracking_on: bool, purpose: str = "newsletter", kind: str = NEWS_KIND, campaign: bool = True):
    return MailContext(id=42, kind=kind, locale="en", to_address="ann@example.com", purpose=purpose,
                       data={} if campaign else {"order_number": "1", "new_eta": "2026-12-01"},
                       campaign_id=7 if campaign else None, customer_id=3, created_at=utcnow(),
                       customer=Recipient(id=3, first_name="Ann"),
                       campaign=CampaignOptions(id=7, tracking=tracking_on, subjects={}, data={"headline": "Hi"},
                                                slug=utm.slug("Spring Sale 2026!", 7)) if campaign else None,
                       tracking_allowed=True)


def _shop_links(settings, html: str, tracked: bool) -> list[str]:
    if tracked:
        tokens = [unquote(t) for t in re.findall(r"https://mail\.shop\.example/t/c/([A-Za-z0-9._~%-]+)", html)]
        return [tracking.read(settings, tracking.CLICK, t).url for t in tokens]
    return [u for u in re.findall(r'href="([^"]+)"', html) if "shop.example.com" in u]


@pytest.mark.parametrize("tracked", [True, False])
def test_campaign_links_to_the_shop_get_utm_parameters_unless_present(parts, tracked):
    # Given a campaign mail whose shop link already carries utm_source=news (tests/campaign_support.SHOP_URL)
    settings, renderer, signer = parts
    # When it is composed, with click tracking on or off
    msg = message_from_bytes(compose(settings, renderer, signer, _mail(tracking_on=tracked)).message,
                             policy=policy.default)
    html = msg.get_body(("html",)).get_content().replace("&amp;", "&")
    (link,) = _shop_links(settings, html, tracked)
    query = parse_qs(urlsplit(link).query)
    # Then the missing parameters are added and the one present is kept
    assert query == {"utm_source": ["news"], "utm_medium": ["email"], "utm_campaign": ["spring-sale-2026"]}


def test_tagging_leaves_other_domains_and_complete_links_alone():
    domains = ("shop.example.com",)
    assert utm.tag("https://blog.other.example/x", domains=domains, source="newsletter", campaign="c") \
        == "https://blog.other.example/x"
    full = "https://shop.example.com/?utm_source=a&utm_medium=b&utm_campaign=c"
    assert utm.tag(full, domains=domains, source="newsletter", campaign="x") == full
    assert utm.tag("https://www.shop.example.com/p#top", domains=domains, source="newsletter", campaign="s") \
        == "https://www.shop.example.com/p?utm_source=newsletter&utm_medium=email&utm_campaign=s#top"
    assert utm.slug("Café Größe", 3) == "cafe-grosse" and utm.slug("春", 9) == "campaign-9"


def test_marketing_and_transactional_mail_use_their_own_from_and_feedback_id(parts):
    settings, renderer, signer = parts
    # Given a campaign mail and an order notice
    news = message_from_bytes(compose(settings, renderer, signer, _mail(tracking_on=False)).message,
                              policy=policy.default)
    notice = message_from_bytes(compose(settings, renderer, signer, _mail(
        tracking_on=False, purpose="transactional", kind="order_delayed", campaign=False)).message,
        policy=policy.default)
    # Then each goes out from its stream's address, and Feedback-ID / List-Id name that stream's domain
    assert news["From"].addresses[0].addr_spec == "news@news.shop.example"
    assert notice["From"].addresses[0].addr_spec == "orders@orders.shop.example"
    assert news["Feedback-ID"] == "c7:newsletter/test_news:marketing:news.shop.example"
    assert notice["Feedback-ID"] == "order_delayed:order_delayed:transactional:orders.shop.example"
    assert news["List-Id"] == '"Northwind Shop newsletter" <newsletter.news.shop.example>'
    assert notice["List-Id"] is None
