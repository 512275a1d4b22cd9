"""Rendering behaviour: locales and fallback, Babel formatting, compile cache, click tracking,
inlined CSS, plain text, escaping, campaign subjects and cache keys."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mailer.rendering import Renderer, fallback_chain, html_to_text, preview_context
from mailer.settings import PROJECT_ROOT
from tests.conftest import make_settings

TRACK = "https://t.example.com/c?u="


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(make_settings())


def ctx(**kw):
    base = {"first_name": "Ann", "unsubscribe_url": "https://shop.example.com/u/TOKEN",
            "preferences_url": "https://shop.example.com/p/TOKEN"}
    return base | kw


def hrefs(html: str) -> list[str]:
    import html as h

    return [h.unescape(u) for u in re.findall(r'<a\b[^>]*?\bhref="([^"]*)"', html)]


# -- locales ---------------------------------------------------------------------------------
@pytest.mark.parametrize("asked,chain", [
    ("zh-HK", ["zh-HK", "zh-TW", "en"]),
    ("zh_MO", ["zh-MO", "zh-TW", "en"]),
    ("zh-SG", ["zh-SG", "zh-CN", "en"]),
    ("zh-Hans-CN", ["zh-Hans-CN", "zh-CN", "en"]),
    ("pl-PL", ["pl-PL", "pl", "en"]),
    ("xx-YY", ["xx-YY", "xx", "en"]),
    (None, ["en"]),
])
def test_fallback_chain(asked, chain):
    assert fallback_chain(asked) == chain


@pytest.mark.parametrize("asked,resolved", [("zh-HK", "zh-TW"), ("pl-PL", "pl"), ("de-DE", "en"), ("fr-CA", "fr"),
                                            ("ar-SA", "ar"), ("ko_KR", "ko"), (None, "en"), ("zh-CN", "zh-CN")])
def test_render_resolves_the_template_locale(renderer, asked, resolved):
    r = renderer.render("confirm_subscription", asked, renderer.sample("confirm_subscription"), context=ctx())
    assert r.locale == resolved
    assert f'lang="{resolved}"' in r.html[:300]


def test_money_dates_and_numbers_follow_the_locale_and_the_customers_currency(renderer):
    data = renderer.sample("abandoned_cart")  # total 117.90
    cases = {
        ("en", "USD"): "$117.90",
        ("pl", "PLN"): "117,90\u00a0zł",
        ("fr", "EUR"): "117,90\u00a0€",
        ("ko", "KRW"): "₩118",
        ("zh-TW", "TWD"): "$117.90",
        ("zh-CN", "CNY"): "¥117.90",
    }
    for (loc, currency), expected in cases.items():
        r = renderer.render("abandoned_cart", loc, data, context=ctx(currency=currency))
        assert expected in r.text, (loc, currency, r.text)
    # And a customer's own region formats numbers (zh-HK text is zh-TW, money is Hong Kong style)
    r = renderer.render("abandoned_cart", "zh-HK", data, context=ctx(currency="HKD"))
    assert r.locale == "zh-TW" and "HK$117.90" in r.text
    # And dates are written the local way
    eta = renderer.sample("order_delayed")
    assert "1er décembre 2026" in renderer.render("order_delayed", "fr", eta, context=ctx()).text
    assert "1 grudnia 2026" in renderer.render("order_delayed", "pl", eta, context=ctx()).text
    assert "2026년 12월 1일" in renderer.render("order_delayed", "ko", eta, context=ctx()).text
    assert "2026年12月1日" in renderer.render("order_delayed", "zh-CN", eta, context=ctx()).text


def test_date_times_are_shown_in_the_customers_time_zone(renderer):
    data = renderer.sample("newsletter/seasonal_sale")  # ends 2026-01-31T22:59Z
    warsaw = renderer.render("newsletter/seasonal_sale", "pl", data, context=ctx(timezone="Europe/Warsaw"))
    seoul = renderer.render("newsletter/seasonal_sale", "ko", data, context=ctx(timezone="Asia/Seoul"))
    assert "31 stycznia 2026 23:59" in warsaw.text
    assert "2026년 2월 1일" in seoul.text


def test_subjects_and_preheaders_are_localized(renderer):
    data = renderer.sample("order_delayed")
    subjects = {loc: renderer.render("order_delayed", loc, data, context=ctx()) for loc in ("en", "pl", "ar")}
    assert subjects["en"].subject.startswith("Your order NW-10482")
    assert subjects["pl"].subject.startswith("Zamówienie NW-10482")
    assert "طلبك" in subjects["ar"].subject
    assert "1 grudnia 2026" in subjects["pl"].preheader
    # And the preheader is the hidden preview text of the HTML, not part of the text body
    assert subjects["pl"].preheader in subjects["pl"].html
    assert subjects["pl"].preheader not in subjects["pl"].text


def test_arabic_reads_right_to_left(renderer):
    r = renderer.render("abandoned_cart", "ar", renderer.sample("abandoned_cart"), context=ctx())
    assert r.html.startswith('<!DOCTYPE html><html lang="ar" dir="rtl"')
    assert "direction:rtl" in r.html and "text-align:right" in r.html
    en = renderer.render("abandoned_cart", "en", renderer.sample("abandoned_cart"), context=ctx())
    assert "direction:rtl" not in en.html


def test_per_locale_product_names(renderer):
    data = renderer.sample("back_in_stock")
    assert "Lniana koszula" in renderer.render("back_in_stock", "pl", data, context=ctx()).text
    assert "亞麻襯衫" in renderer.render("back_in_stock", "zh-HK", data, context=ctx()).text


# -- compile once, render many --------------------------------------------------------------
def test_mjml_is_compiled_once_per_kind_locale_and_cache_key(renderer):
    data = renderer.sample("reward_code")
    for i in range(20):
        renderer.render("reward_code", "pl", data, context=ctx(first_name=f"N{i}"))
    assert renderer.compiles == 1
    renderer.render("reward_code", "ko", data, context=ctx())
    renderer.render("reward_code", "pl", data, context=ctx(), cache_key="campaign:7")
    renderer.render("reward_code", "pl", data, context=ctx(), cache_key="campaign:7")
    assert renderer.compiles == 3
    assert renderer.forget("campaign:7") == 1
    renderer.render("reward_code", "pl", data, context=ctx(), cache_key="campaign:7")
    assert renderer.compiles == 4


def test_campaign_data_is_validated_once_per_cache_key_and_data_object(renderer, monkeypatch):
    # Given a campaign's data, the same object for every recipient, and a count of validations
    data = renderer.sample("reward_code")
    checks = []
    real = renderer.validate
    monkeypatch.setattr(renderer, "validate", lambda kind, d: checks.append(kind) or real(kind, d))
    # When twenty recipients' mails render with the campaign's cache key
    htmls = [renderer.render("reward_code", "pl", data, context=ctx(first_name=f"N{i}"),
                             cache_key="campaign:7").html for i in range(20)]
    # Then the data was checked once, and each mail still has its own recipient's values
    assert checks == ["reward_code"]
    assert all(f"N{i}" in html for i, html in enumerate(htmls))
    # When another data object, or no cache key, renders
    renderer.render("reward_code", "pl", dict(data), context=ctx(), cache_key="campaign:7")
    renderer.render("reward_code", "pl", data, context=ctx())
    # Then each is checked: only the very same object under the same key is trusted
    assert len(checks) == 3
    # And invalid data is refused every time, never remembered as valid
    bad = {k: v for k, v in data.items() if k != "code"}
    for _ in range(2):
        with pytest.raises(Exception, match="code"):
            renderer.render("reward_code", "pl", bad, context=ctx(), cache_key="campaign:8")


def test_campaign_cache_key_keeps_its_version_and_new_campaigns_see_edits(tmp_path):
    # Given a copy of the templates and a campaign that already rendered
    shutil.copytree(PROJECT_ROOT / "templates", tmp_path, dirs_exist_ok=True)
    r = Renderer(make_settings(templates_dir=tmp_path))
    kind = "newsletter/product_launch"
    data = r.sample(kind)
    first = r.render(kind, "en", data, context=ctx(), cache_key="campaign:1")
    # When a marketer edits the template
    path = tmp_path / "newsletter" / "product_launch" / "en.mjml"
    path.write_text(path.read_text(encoding="utf-8").replace("Introducing", "Meet"), encoding="utf-8")
    # Then the running campaign keeps rendering what it started with, and a new campaign gets the edit
    assert "Introducing" in r.render(kind, "en", data, context=ctx(), cache_key="campaign:1").html
    assert "Meet The Harbour" in r.render(kind, "en", data, context=ctx(), cache_key="campaign:2").html
    assert "Introducing" in first.html


def test_campaign_subject_override_per_locale(renderer):
    kind = "newsletter/seasonal_sale"
    subjects = {"en": "Last call, {{ first_name }}!", "pl": "Ostatnia szansa, {{ first_name }}!"}
    en = renderer.render(kind, "en", renderer.sample(kind), context=ctx(), subject=subjects, cache_key="campaign:9")
    pl = renderer.render(kind, "pl-PL", renderer.sample(kind), context=ctx(first_name="Kasia"), subject=subjects)
    ko = renderer.render(kind, "ko", renderer.sample(kind), context=ctx(), subject=subjects)
    assert en.subject == "Last call, Ann!"
    assert pl.subject == "Ostatnia szansa, Kasia!"
    assert ko.subject == "Last call, Ann!"  # the override's fallback chain: ko -> en
    assert "<title>Ostatnia szansa, Kasia!</title>" in pl.html
    plain = renderer.render(kind, "en", renderer.sample(kind), context=ctx(), subject="Sale {{ first_name }}",
                            preheader={"en": "Ends soon"})
    assert (plain.subject, plain.preheader) == ("Sale Ann", "Ends soon")


# -- click tracking -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["newsletter/product_launch", "abandoned_cart", "csat_survey", "reward_code"])
def test_wrap_link_rewrites_every_link_but_unsubscribe_and_preferences(renderer, kind):
    data = renderer.sample(kind)
    calls: list[str] = []

    def wrap(url: str) -> str:
        calls.append(url)
        return TRACK + url

    plain = renderer.render(kind, "en", data, context=ctx())
    tracked = renderer.render(kind, "en", data, context=ctx(wrap_link=wrap))
    plain_links = [u for u in hrefs(plain.html) if u.startswith("http")]
    tracked_links = [u for u in hrefs(tracked.html) if u.startswith("http")]
    # Then without wrap_link nothing changes, with it every http(s) link goes through it...
    assert not any(u.startswith(TRACK) for u in plain_links)
    assert len(plain_links) == len(tracked_links) > 0
    for original, wrapped in zip(plain_links, tracked_links):
        if original in (ctx()["unsubscribe_url"], ctx()["preferences_url"]):
            assert wrapped == original  # ...except the unsubscribe and preferences links
        else:
            assert wrapped == TRACK + original
    assert set(calls) >= {u for u in plain_links if u not in ctx().values()}
    # And the text part carries the same tracked links
    for original in plain_links:
        if original not in ctx().values() and original in plain.text:
            assert TRACK + original in tracked.text


def test_tracking_rewrite_handles_literal_and_mixed_urls(tmp_path):
    shutil.copytree(PROJECT_ROOT / "templates" / "_layouts", tmp_path / "_layouts")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "kind.toml").write_text('purpose = "transactional"\nrequired = ["sku"]\n'
                                                  '[subject]\nen = "x"\n[preheader]\nen = "y"\n')
    (tmp_path / "probe" / "en.mjml").write_text(
        '[% extends "_layouts/notice.mjml" %]\n[% block content %]\n<mj-section><mj-column>\n'
        '<mj-text><a href="https://shop.example.com/p?a=1&amp;b=2">literal</a> '
        '<a href="https://shop.example.com/p/{{ sku }}?ref=mail">mixed</a> '
        '<a href="mailto:help@example.com">mail</a> <a href="#top">anchor</a></mj-text>\n'
        '<mj-button href="{{ unsubscribe_url }}">out</mj-button>\n'
        '</mj-column></mj-section>\n[% endblock %]\n')
    r = Renderer(make_settings(templates_dir=tmp_path))
    out = r.render("probe", "en", {"sku": "A&B"}, context=ctx(wrap_link=lambda u: TRACK + u))
    links = hrefs(out.html)
    assert TRACK + "https://shop.example.com/p?a=1&b=2" in links
    assert TRACK + "https://shop.example.com/p/A&B?ref=mail" in links
    assert "mailto:help@example.com" in links and "#top" in links
    assert ctx()["unsubscribe_url"] in links
    assert r.compiled("probe", "en").tracked_links == 2


# -- HTML, CSS and text ----------------------------------------------------------------------
def test_inline_styles_are_inlined_once_at_compile_time(renderer):
    r = renderer.render("reward_code", "en", renderer.sample("reward_code"), context=ctx())
    # The mj-style inline="inline" rules end up in style attributes...
    assert re.search(r'class="code-box"[^>]*>\s*<div style="[^"]*border: 2px dashed #e36414', r.html)
    assert re.search(r'<a href="https://shop.example.com/u/TOKEN"[^>]*style="[^"]*text-decoration: underline', r.html)
    # ...and are not left in a <style> block, while the responsive rules stay in <head>
    assert ".code-box div" not in r.html
    assert "@media only screen and (max-width: 479px)" in r.html


def test_data_is_html_escaped_but_plain_in_text(renderer):
    evil = '<script>alert("x")</script> & Co'
    r = renderer.render("confirm_subscription", "en", renderer.sample("confirm_subscription"),
                        context=ctx(first_name=evil))
    assert "<script>" not in r.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in r.html
    assert evil in r.text


def test_text_part_is_readable_with_its_links(renderer):
    r = renderer.render("shipping_update", "en", renderer.sample("shipping_update"), context=ctx())
    assert "<" not in r.text and "&amp;" not in r.text
    assert "Track your parcel (https://www.dhl.com/track?tracking-id=JD014600006281230704)" in r.text
    assert "Tracking number JD014600006281230704" in r.text
    assert "\n\n\n" not in r.text
    # Decoration marked no-text (the progress bar) is left out
    assert "Out for delivery" not in r.text


def test_html_to_text_basics():
    html = ('<html><head><style>p{}</style><title>t</title></head><body><div style="display:none">hidden</div>'
            '<p>Hello&nbsp;<b>world</b></p><ul><li>one</li><li>two</li></ul>'
            '<a href="https://x.example/a">Go</a> <a href="https://x.example/img"><img src="i.png"></a>'
            '<table><tr><td>A</td><td>1</td></tr><tr><td>B</td><td>2</td></tr></table></body></html>')
    text = html_to_text(html)
    assert "hidden" not in text and "p{}" not in text
    assert "Hello world" in text and "- one\n- two" in text
    assert "Go (https://x.example/a)" in text and "https://x.example/img" not in text
    assert "A 1\nB 2" in text


class _Balance(HTMLParser):
    VOID = {"br", "img", "meta", "link", "hr", "input", "col"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> vs {self.stack[-1:]}")
            if tag in self.stack:
                del self.stack[self.stack.index(tag):]
        else:
            self.stack.pop()


@pytest.mark.parametrize("count", [1, 3, 5])
def test_loops_over_sections_produce_well_formed_html(renderer, count):
    # Given a product grid of 1, 3 or 5 products (rows of two columns)
    kind = "newsletter/product_launch"
    data = renderer.sample(kind)
    data = dict(data, products=(data["products"] * 2)[:count])
    # When it renders
    r = renderer.render(kind, "en", data, context=ctx())
    # Then the HTML is balanced and has one half-width column per product
    checker = _Balance()
    checker.feed(r.html)
    assert checker.errors == [] and checker.stack == []
    assert r.html.count('class="mj-outlook-group-fix mj-column-per-50"') == count


@hsettings(max_examples=60, deadline=None)
@given(name=st.text(min_size=0, max_size=40), code=st.text(alphabet=st.characters(blacklist_categories=("Cs",)),
                                                         min_size=1, max_size=30))
def test_any_text_in_data_renders_escaped_and_subject_stays_one_line(name, code):
    renderer = _shared_renderer()
    data = dict(renderer.sample("reward_code"), code=code)
    r = renderer.render("reward_code", "en", data, context=ctx(first_name=name))
    from markupsafe import escape

    # Then the subject is one line, and the name and code appear in the HTML only escaped
    assert "\n" not in r.subject and "\r" not in r.subject
    body = r.html.split("<body", 1)[1]
    assert str(escape(code)) in body
    if name:
        assert str(escape(name)) in body


_RENDERER: list[Renderer] = []


def _shared_renderer() -> Renderer:
    if not _RENDERER:
        _RENDERER.append(Renderer(make_settings()))
    return _RENDERER[0]


def test_preview_context_has_a_local_name():
    s = make_settings()
    assert preview_context(s, "ko")["first_name"] == "지우"
    assert preview_context(s, "zh-HK")["first_name"] == "怡君"
    assert preview_context(s, "pl", currency="PLN")["currency"] == "PLN"


def test_parallel_renders_compile_each_template_once(renderer):
    # Given eight worker threads rendering the same kind in several locales at once
    from concurrent.futures import ThreadPoolExecutor

    data = renderer.sample("order_delayed")
    jobs = [("en", i) for i in range(8)] + [("pl", i) for i in range(8)] + [("ar", i) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: renderer.render("order_delayed", job[0], data,
                                                            context=ctx(first_name=f"N{job[1]}")), jobs))
    # Then every mail is complete and personal, and each locale compiled exactly once
    assert all(f"N{i}" in r.text for (loc, i), r in zip(jobs, results))
    assert {r.locale for r in results} == {"en", "pl", "ar"}
    assert renderer.compiles == 3
