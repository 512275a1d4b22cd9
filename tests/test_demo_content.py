"""What a person sees in the demo mails: their own language throughout, and dates that are not stale."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from email import message_from_bytes, policy

import pytest

from mailer import clock, demo
from mailer.app import get_app, set_app
from mailer.rendering import Renderer, i18n, preview_context
from mailer.settings import PROJECT_ROOT
from tests.conftest import make_settings

#: A fixed clock for the demo's relative dates.
NOW = datetime(2027, 6, 10, 8, 30, tzinfo=UTC)
LOCALES = ("pl", "zh-TW", "ar")
CURRENCY = {"pl": "PLN", "zh-TW": "TWD", "ar": "AED"}

_RENDERER = Renderer(make_settings())


def _english_labels(value, out: set[str]) -> set[str]:
    """Every "en" text of a per-locale object anywhere in a sample."""
    if isinstance(value, dict):
        if "en" in value and len(value) > 1 and all(isinstance(v, str) for v in value.values()):
            out.add(value["en"])
        for v in value.values():
            _english_labels(v, out)
    elif isinstance(value, list):
        for v in value:
            _english_labels(v, out)
    return out


ENGLISH = sorted(set().union(*(_english_labels(json.loads(p.read_text(encoding="utf-8")), set())
                               for p in (PROJECT_ROOT / "templates").glob("**/sample.json"))))


def _render(kind: str, locale: str, data: dict):
    return _RENDERER.render(kind, locale, data,
                            context=preview_context(_RENDERER.settings, locale, currency=CURRENCY[locale]))


def test_the_samples_carry_english_names_reasons_and_variants_to_translate():
    # Given the samples, Then the delay reason, product names and colours are among the per-locale texts
    assert "A storm closed the port in Gdańsk for two days." in ENGLISH
    assert {"Linen shirt", "Merino beanie", "Charcoal", "Wool overcoat"} <= set(ENGLISH)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", _RENDERER.kinds())
def test_demo_mails_show_no_english_names_or_reasons_in_other_languages(kind, locale):
    # Given the demo's data for this kind, When it is rendered in Polish, Chinese or Arabic
    r = _render(kind, locale, demo.sample_data(_RENDERER, kind, now=NOW))
    # Then no English product name, colour or delay reason appears in either part
    found = [s for s in ENGLISH if s in r.html or s in r.text or s in r.subject or s in r.preheader]
    assert found == [], (kind, locale, found)


def test_order_delayed_shows_the_reason_and_product_names_in_the_readers_language():
    # Given the demo's late order, When rendered in each language, Then the translated texts are there
    data = demo.sample_data(_RENDERER, "order_delayed", now=NOW)
    for locale, reason, name in (("pl", "Sztorm zamknął port w Gdańsku", "Lniana koszula"),
                                 ("zh-TW", "暴風雨使格但斯克港封閉了兩天", "亞麻襯衫"),
                                 ("ar", "أغلقت عاصفة ميناء غدانسك", "قميص كتان")):
        r = _render("order_delayed", locale, data)
        assert reason in r.html and reason in r.text, locale
        assert name in r.html and name in r.text, locale


def test_english_data_inside_an_arabic_paragraph_is_isolated_with_bdi():
    # Given a shop that sends its delay reason in English only
    data = {**demo.sample_data(_RENDERER, "order_delayed", now=NOW), "reason": "A storm closed the port."}
    # When the Arabic mail is rendered
    r = _render("order_delayed", "ar", data)
    # Then the sentence is isolated, so its full stop stays at its own end in the RTL paragraph
    assert "<bdi>A storm closed the port.</bdi>" in r.html
    assert "<bdi>NW-10482</bdi>" in r.html
    # And the text part carries the sentence without markup
    assert "A storm closed the port." in r.text and "<bdi>" not in r.text


def test_demo_sample_dates_are_counted_from_the_clock():
    # Given the fixed clock, When the demo builds its sample data
    sale = demo.sample_data(_RENDERER, "newsletter/seasonal_sale", now=NOW)
    late = demo.sample_data(_RENDERER, "order_delayed", now=NOW)
    reward = demo.sample_data(_RENDERER, "reward_code", now=NOW)
    # Then the sale ends a week from now, on a whole hour, and is in the future
    ends = i18n.to_datetime(sale["ends_at"])
    assert ends > NOW and ends == datetime(2027, 6, 17, 8, 0, tzinfo=UTC)
    # And the late order was due yesterday and now comes in the future; the reward expires later
    assert date.fromisoformat(late["previous_eta"]) < NOW.date() < date.fromisoformat(late["new_eta"])
    assert date.fromisoformat(reward["expires_at"]) > NOW.date()
    # And the sample file itself is left as written (previews and checks stay reproducible)
    assert _RENDERER.sample("newsletter/seasonal_sale")["ends_at"] == "2026-01-31T22:59:00Z"


@pytest.mark.parametrize("locale", LOCALES)
def test_the_demo_newsletter_advertises_the_sale_end_from_the_clock(locale):
    # Given the demo newsletter's data on the fixed clock, When rendered
    r = _render("newsletter/seasonal_sale", locale, demo.sample_data(_RENDERER, "newsletter/seasonal_sale", now=NOW))
    # Then it names the 2027 end date and not the stale January one from sample.json
    assert "2027" in r.html and "2026" not in r.html, locale


def test_the_demo_outbox_speaks_each_readers_language_and_advertises_a_sale_still_on(tmp_path, monkeypatch):
    # Given the demo on a fixed clock (sample dates only; sending keeps real time)
    monkeypatch.setattr(clock, "utcnow", lambda: NOW)
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'demo.db'}", smtp_url=f"outbox://{tmp_path / 'out'}")
    previous = get_app()
    try:
        # When it runs
        result = demo.run(settings)
    finally:
        set_app(previous)
    mails = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in result.outbox.glob("*.eml")]
    by_to = {}
    for m in mails:
        by_to.setdefault(str(m["To"]).split("<")[-1].rstrip(">"), []).append(m)
    # Then the Polish, Chinese and Arabic readers' mails carry no English name, colour or reason
    for email in ("lukasz@example.com", "mei@example.com", "layla@example.com"):
        assert by_to.get(email), (email, sorted(by_to))
        for m in by_to[email]:
            html = m.get_body(("html",)).get_content()
            text = m.get_body(("plain",)).get_content()
            found = [s for s in ENGLISH if s in html or s in text]
            assert found == [], (email, str(m["Subject"]), found)
    # And the newsletter's sale ends after the clock's now (2027-06-17), not in January 2026
    sale = [m for m in mails if "EXTRA5" in m.get_body(("plain",)).get_content()]
    assert sale, "the demo newsletter was not sent"
    for m in sale:
        assert "2027" in m.get_body(("plain",)).get_content() and "2026" not in str(m["Subject"])
