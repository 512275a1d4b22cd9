"""Every shipped kind x locale renders cleanly; ``mailer templates check`` and ``mailer preview`` work."""

from __future__ import annotations

import shutil
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import main
from mailer.rendering import (
    PREVIEW_PREFERENCES,
    PREVIEW_UNSUBSCRIBE,
    SUPPORTED_LOCALES,
    Renderer,
    check_templates,
    preview_context,
)
from mailer.settings import PROJECT_ROOT
from tests.conftest import make_settings

NOTICE_KINDS = {"order_delayed", "shipping_update", "back_in_stock", "abandoned_cart", "reward_code", "csat_survey",
                "confirm_subscription"}
NEWSLETTERS = {"newsletter/product_launch", "newsletter/seasonal_sale"}
MARKETING = {"back_in_stock", "abandoned_cart", "reward_code"} | NEWSLETTERS


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(make_settings())


def env_with(tmp_path: Path, **env) -> dict:
    return {"MAILER_TEMPLATES_DIR": str(tmp_path), **env}


def test_every_kind_the_issue_asks_for_exists_in_every_locale(renderer):
    # Given the shipped templates
    kinds = set(renderer.kinds())
    # Then every notice kind and at least two newsletters exist
    assert NOTICE_KINDS | NEWSLETTERS <= kinds
    # And each is written in all seven locales, with subject and preheader per locale
    for kind in kinds:
        spec = renderer.spec(kind)
        assert set(SUPPORTED_LOCALES) <= set(spec.locales), kind
        assert set(SUPPORTED_LOCALES) <= set(spec.subjects), kind
        assert set(SUPPORTED_LOCALES) <= set(spec.preheaders), kind


def test_lawful_basis_is_declared_per_kind(renderer):
    # Then transactional kinds say so and marketing kinds name the consent purpose they need
    for kind in ("order_delayed", "shipping_update", "csat_survey", "confirm_subscription"):
        assert renderer.spec(kind).transactional
    assert renderer.spec("back_in_stock").purpose == "restock:{sku}"
    assert renderer.spec("abandoned_cart").purpose == "newsletter"
    assert renderer.spec("reward_code").purpose == "loyalty"
    for kind in NEWSLETTERS:
        assert renderer.spec(kind).purpose == "newsletter"
    assert "confirm_url" in renderer.spec("confirm_subscription").required
    assert "code" in renderer.spec("reward_code").required


def test_check_finds_no_problem_in_the_shipped_templates(renderer):
    # When every kind x locale is rendered with its sample data (and with only required fields)
    problems = check_templates(renderer)
    # Then nothing is reported
    assert problems == [], "\n".join(map(str, problems))


@pytest.mark.parametrize("kind", sorted(NOTICE_KINDS | NEWSLETTERS))
def test_every_locale_renders_its_own_language_and_footer(renderer, kind):
    sample = renderer.sample(kind)
    subjects = set()
    for loc in SUPPORTED_LOCALES:
        # When the kind is rendered for the locale
        r = renderer.render(kind, loc, sample, context=preview_context(renderer.settings, loc))
        subjects.add(r.subject)
        # Then it is that locale's template, with a subject and a preheader
        assert r.locale == loc
        assert r.subject and r.preheader
        assert f'lang="{loc}"' in r.html[:400]
        # And the footer has the postal address; marketing mail also the two links, in both parts
        assert make_settings().store_address in r.text
        if kind in MARKETING:
            for url in (PREVIEW_UNSUBSCRIBE, PREVIEW_PREFERENCES):
                assert f'href="{url}"' in r.html and url in r.text
        else:
            assert PREVIEW_UNSUBSCRIBE not in r.html
        # And the Arabic mail reads right to left
        assert ('dir="rtl"' in r.html[:400]) == (loc == "ar")
    # And the seven subjects are seven different texts (really translated)
    assert len(subjects) == len(SUPPORTED_LOCALES)


def test_every_kind_and_locale_builds_a_mime_message_the_strict_parser_accepts(renderer):
    from datetime import datetime, timezone

    from mailer.message.mime import MailParts, build

    for kind in renderer.kinds():
        for loc in SUPPORTED_LOCALES:
            r = renderer.render(kind, loc, renderer.sample(kind), context=preview_context(renderer.settings, loc))
            raw = build(MailParts(from_name="Northwind Shop", from_address="shop@example.com", to_name="Ann Lee",
                                  to_address="ann@example.com", subject=r.subject, text=r.text, html=r.html,
                                  message_id=f"<{kind.replace('/', '.')}.{loc}@example.com>",
                                  date=datetime(2026, 3, 1, tzinfo=timezone.utc)))
            msg = message_from_bytes(raw, policy=policy.strict)
            assert msg["Subject"] == r.subject, (kind, loc)
            # (base64 bodies travel with CRLF line ends)
            assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == r.html
            assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == r.text


def test_cli_templates_check_passes_on_the_shipped_templates():
    result = CliRunner().invoke(main, ["templates", "check"], env={"MAILER_TEMPLATES_DIR": str(PROJECT_ROOT / "templates")})
    assert result.exit_code == 0, result.output
    assert "templates ok: 10 kinds, 70 kind x locale pairs" in result.output


def test_cli_templates_check_reports_every_problem_with_file_and_line(tmp_path):
    # Given a copy of the templates with two broken files and a missing translation
    shutil.copytree(PROJECT_ROOT / "templates", tmp_path, dirs_exist_ok=True)
    od = tmp_path / "order_delayed" / "pl.mjml"
    lines = od.read_text(encoding="utf-8").splitlines()
    lines[6] = lines[6].replace("</mj-text>", "</mj-txt>")  # line 7: broken closing tag
    od.write_text("\n".join(lines), encoding="utf-8")
    rc = tmp_path / "reward_code" / "ko.mjml"
    rc.write_text(rc.read_text(encoding="utf-8").replace("{{ code }}", "{{ coupon }}"), encoding="utf-8")
    (tmp_path / "csat_survey" / "fr.mjml").unlink()
    # When the check runs
    result = CliRunner().invoke(main, ["templates", "check"], env=env_with(tmp_path))
    # Then it fails and names each problem with its file (and line where there is one)
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "order_delayed/pl.mjml:7" in out and "</mj-txt>" in out
    assert "reward_code/ko.mjml" in out and "coupon" in out
    assert "csat_survey" in out and "no fr.mjml" in out
    problems = check_templates(Renderer(make_settings(templates_dir=tmp_path)))
    assert {(p.kind, p.locale) for p in problems} >= {("order_delayed", "pl"), ("reward_code", "ko"),
                                                      ("csat_survey", "fr")}


def test_cli_preview_writes_html_and_text_with_locale_fallback(tmp_path):
    out = tmp_path / "od.html"
    result = CliRunner().invoke(main, ["preview", "order_delayed", "--locale", "zh-HK", "-o", str(out),
                                       "--currency", "HKD"])
    assert result.exit_code == 0, result.output
    assert "zh-TW" in result.output and "asked for zh-HK" in result.output
    html = out.read_text(encoding="utf-8")
    text = out.with_suffix(".txt").read_text(encoding="utf-8")
    assert "您的訂單將延遲送達" in html and html.startswith("<!")
    assert text.startswith("Subject: [Northwind Shop] 您的訂單 NW-10482") and "https://shop.example.com/orders/NW-10482" in text


def test_cli_preview_takes_data_and_names_a_missing_field(tmp_path):
    good = CliRunner().invoke(main, ["preview", "confirm_subscription", "--locale", "pl", "-o", str(tmp_path / "c.html"),
                                     "--data", '{"confirm_url": "https://shop.example.com/c/XYZ"}'])
    assert good.exit_code == 0, good.output
    assert "https://shop.example.com/c/XYZ" in (tmp_path / "c.html").read_text(encoding="utf-8")
    bad = CliRunner().invoke(main, ["preview", "confirm_subscription", "--data", '{"confirm": "x"}',
                                    "-o", str(tmp_path / "d.html")])
    assert bad.exit_code == 2
    assert "confirm_url" in bad.output
    assert not (tmp_path / "d.html").exists()
