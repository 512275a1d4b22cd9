"""Helpers shared by the campaign, tracking and web tests (not a test module).

``newsletter_templates(tmp)`` builds a templates folder holding the real kinds plus a
small test newsletter (``newsletter/test_news``, en + pl) with a tracked link, so these
tests do not depend on the wording of the shipped newsletters.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
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
