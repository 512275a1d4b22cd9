"""Helpers shared by the campaign, tracking and web tests (not a test module).

``newsletter_templates(tmp)`` builds a templates folder holding the real kinds plus a
small test newsletter (``newsletter/test_news``, en + pl) with a tracked link, so these
tests do not depend on the wording of the shipped newsletters. ``campaign_marked_sent(app, ...)``
makes a campaign whose deliveries are all marked sent at a given time (for figures and
reports; no transport involved).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update

from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.models import Delivery, DeliveryStatus
from mailer.settings import PROJECT_ROOT

NEWS_KIND = "newsletter/test_news"
SHOP_URL = "https://shop.example.com/sale?utm_source=news"

_MJML = """<mjml>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text>{greeting} {{{{ first_name }}}}, {{{{ headline }}}}</mj-text>
        <mj-button href="{url}">{button}</mj-button>
        <mj-text><a href="{{{{ unsubscribe_url }}}}">{unsubscribe}</a> ·
          <a href="{{{{ preferences_url }}}}">{prefs}</a></mj-text>
        <mj-text>{{{{ store_name }}}} · {{{{ store_address }}}}</mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>
"""

_KIND = """description = "Test newsletter"
purpose = "newsletter"
required = ["headline"]
optional = []

[subject]
en = "News: {{ headline }}"
pl = "Nowości: {{ headline }}"
"""


def newsletter_templates(tmp: Path) -> Path:
    """A templates dir: a copy of the real kinds plus newsletter/test_news."""
    root = tmp / "templates"
    shutil.copytree(PROJECT_ROOT / "templates", root, dirs_exist_ok=True)
    news = root / "newsletter"
    news.mkdir(exist_ok=True)
    kind = news / "test_news"
    kind.mkdir()
    (kind / "kind.toml").write_text(_KIND, encoding="utf-8")
    (kind / "sample.json").write_text('{"headline": "Spring sale"}', encoding="utf-8")
    (kind / "en.mjml").write_text(_MJML.format(greeting="Hello", url=SHOP_URL, button="Shop now",
                                               unsubscribe="Unsubscribe", prefs="Preferences"), encoding="utf-8")
    (kind / "pl.mjml").write_text(_MJML.format(greeting="Cześć", url=SHOP_URL, button="Do sklepu",
                                               unsubscribe="Wypisz się", prefs="Ustawienia"), encoding="utf-8")
    return root


def add_customer(session, settings, email: str, *, locale: str | None = "en", timezone: str | None = None,
                 purposes: tuple[str, ...] = ("newsletter",), first_name: str | None = "Ann"):
    """A customer with current consent for ``purposes`` (via the real ledger)."""
    customer = get_or_create(session, settings, email, locale=locale, first_name=first_name)
    customer.timezone = timezone
    for purpose in purposes:
        consent.append(session, settings, customer=customer, purpose=purpose, action="granted",
                       source="signup_form", proof=consent.Proof(ip="192.0.2.1", user_agent="test",
                                                                 form_id="test-form", wording="Yes please"))
    session.flush()
    return customer


def campaign_marked_sent(app, *, name: str, sent_at: datetime, recipients: int = 10) -> tuple[int, list[int]]:
    """A newsletter to ``recipients`` consenting customers (r0@example.com...), fanned out
    and every delivery marked sent at ``sent_at``; returns (campaign id, delivery ids in order)."""
    settings = app.settings
    with app.session() as s:
        for i in range(recipients):
            add_customer(s, settings, f"r{i}@example.com")
        cid = campaigns.create(s, settings, app.renderer, name=name, template=NEWS_KIND,
                               segment="newsletter_all", data={"headline": "Hi"}).id
        campaigns.send(s, settings, cid)
    while campaign_actors.fan_out_batch(app, cid):
        pass
    with app.session() as s:
        s.execute(update(Delivery).where(Delivery.campaign_id == cid)
                  .values(status=DeliveryStatus.sent, sent_at=sent_at))
        ids = list(s.execute(select(Delivery.id).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())
    return cid, ids
