"""The console's UI text is translated: every `_()` literal in its templates and Python has an entry
in every locale (zh-TW, zh-CN, pl, ko), and each catalog file is well formed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mailer.web.console import i18n

CONSOLE_DIR = Path(i18n.__file__).parent
#: `_("text"` or `_('text'` at a word boundary (not `obj._(`), in Jinja and Python alike.
_CALL = re.compile(r"""(?<![\w.])_\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")


def _unescape(text: str) -> str:
    return text.replace('\\"', '"').replace("\\'", "'").replace("\\\\", "\\")


def used_texts() -> dict[str, str]:
    """Every literal passed to _() in the console, with the first file that uses it."""
    found: dict[str, str] = {}
    for path in sorted(CONSOLE_DIR.rglob("*")):
        if path.suffix not in (".html", ".py"):
            continue
        for m in _CALL.finditer(path.read_text(encoding="utf-8")):
            text = _unescape(m.group(1) if m.group(1) is not None else m.group(2))
            found.setdefault(text, str(path.relative_to(CONSOLE_DIR)))
    for text in i18n.DYNAMIC_TEXTS:
        found.setdefault(text, "i18n.DYNAMIC_TEXTS")
    return found


def test_the_extractor_finds_the_texts_of_the_layout():
    texts = used_texts()
    assert "Log out" in texts and "Skip to content" in texts and "admin" in texts
    assert len(texts) > 50


@pytest.mark.parametrize("locale", [loc for loc in i18n.LOCALES if loc != "en"])
def test_every_console_text_is_translated(locale):
    # Given every text the console passes to _()
    catalog = i18n.catalogs()[locale]
    # Then each has a translation in this locale (add it to mailer/web/console/i18n/<area>.toml)
    missing = {text: where for text, where in used_texts().items() if text not in catalog}
    assert missing == {}, f"{len(missing)} texts without a [{locale}] entry: {missing}"


@pytest.mark.parametrize("locale", [loc for loc in i18n.LOCALES if loc != "en"])
def test_translations_keep_their_placeholders(locale):
    for en, translated in i18n.catalogs()[locale].items():
        assert set(re.findall(r"\{(\w+)\}", en)) == set(re.findall(r"\{(\w+)\}", translated)), (locale, en)
        assert translated.strip(), (locale, en)


def test_catalog_files_have_only_known_locale_tables():
    for path in (CONSOLE_DIR / "i18n").glob("*.toml"):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        assert set(data) <= set(i18n.LOCALES) - {"en"}, path.name


def test_the_translator_formats_after_translating():
    _ = i18n.translator("pl")
    assert _("Log out") == "Wyloguj"
    assert _("Disable {email}", email="a@example.com") == "Wyłącz a@example.com"
    assert i18n.translator("en")("Disable {email}", email="x") == "Disable x"
    assert i18n.translator("pl")("A text nobody translated") == "A text nobody translated"
