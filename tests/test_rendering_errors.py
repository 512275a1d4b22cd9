"""Bad templates and bad data fail early and clearly: file, locale and line, or the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailer.app import App, set_app
from mailer.errors import MissingField, TemplateError, ValidationError
from mailer.models import Delivery
from mailer.rendering import Renderer
from mailer.settings import PROJECT_ROOT
from tests.conftest import make_settings

KIND_TOML = """\
purpose = "transactional"
required = ["order_number"]
optional = ["items", "note"]

[fields.items]
type = "list"
item_required = ["name"]
item_types = { price = "number" }

[subject]
en = "Order {{ order_number }}"

[preheader]
en = "About your order"
"""

GOOD_BODY = """\
[% extends "_layouts/notice.mjml" %]
[% block content %]
<mj-section>
  <mj-column>
    <mj-text>Order {{ order_number }}</mj-text>
    {% if note %}
    <mj-text>{{ note }}</mj-text>
    {% endif %}
  </mj-column>
</mj-section>
[% endblock %]
"""


def make_kind(root: Path, body: str, *, name: str = "probe", toml: str = KIND_TOML, locale: str = "en") -> Path:
    """A templates dir with the shipped layouts and one kind whose ``locale`` file is ``body``."""
    if not (root / "_layouts").exists():
        shutil.copytree(PROJECT_ROOT / "templates" / "_layouts", root / "_layouts")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kind.toml").write_text(toml, encoding="utf-8")
    (folder / "sample.json").write_text('{"order_number": "A-1"}', encoding="utf-8")
    path = folder / f"{locale}.mjml"
    path.write_text(body, encoding="utf-8")
    return path


def render_error(tmp_path: Path, body: str, data: dict | None = None, **kw) -> TemplateError:
    path = make_kind(tmp_path, body, **kw)
    renderer = Renderer(make_settings(templates_dir=tmp_path))
    with pytest.raises(TemplateError) as info:
        renderer.render("probe", kw.get("locale", "en"), data or {"order_number": "A-1"})
    assert info.value.template == str(path) or info.value.template.endswith(".mjml")
    return info.value


def line_of(body: str, needle: str) -> int:
    return next(i for i, ln in enumerate(body.splitlines(), 1) if needle in ln)


def test_a_good_probe_renders(tmp_path):
    make_kind(tmp_path, GOOD_BODY)
    r = Renderer(make_settings(templates_dir=tmp_path)).render("probe", "en", {"order_number": "A-1", "note": "hi"})
    assert "Order A-1" in r.html and "hi" in r.text


@pytest.mark.parametrize("broken,needle,words", [
    # mismatched closing tag inside mj-text (MRML alone would accept it)
    (GOOD_BODY.replace("<mj-text>{{ note }}</mj-text>", "<mj-text><b>{{ note }}</i></mj-text>"), "</i>",
     "closing tag </i> does not match <b>"),
    # an MJML element closed by the wrong tag
    (GOOD_BODY.replace("  </mj-column>", "  </mj-section>", 1), "  </mj-section>", "mismatched tag"),
    # an element MJML does not know
    (GOOD_BODY.replace("<mj-text>Order", "<mj-texte>Order").replace("}}</mj-text>\n    {% if", "}}</mj-texte>\n    {% if", 1),
     "<mj-texte>", "unknown MJML element <mj-texte>"),
    # an element in the wrong place
    (GOOD_BODY.replace("<mj-section>\n  <mj-column>", "<mj-section>\n  <mj-text>x</mj-text>\n  <mj-column>"),
     "<mj-text>x</mj-text>", "<mj-text> cannot be inside <mj-section>"),
    # text straight in a column
    (GOOD_BODY.replace("  <mj-column>\n", "  <mj-column>\n    Hello there\n", 1), "Hello there",
     "stands directly in <mj-column>"),
    # a Jinja block that opens in one mj-text and closes in another
    (GOOD_BODY.replace("    {% if note %}\n    <mj-text>{{ note }}</mj-text>\n    {% endif %}",
                       "    <mj-text>{% if note %}{{ note }}</mj-text>\n    <mj-text>{% endif %}</mj-text>"),
     "{% if note %}{{ note }}", "is never closed"),
    # Jinja syntax error
    (GOOD_BODY.replace("{% if note %}", "{% iff note %}"), "{% iff note %}", "Jinja syntax: Encountered unknown tag 'iff'"),
])
def test_broken_mjml_names_file_locale_and_line(tmp_path, broken, needle, words):
    # When a template with a mistake is compiled
    err = render_error(tmp_path, broken)
    # Then the error names the file, the locale and the line of the mistake
    assert err.template == str(tmp_path / "probe" / "en.mjml")
    assert err.locale == "en"
    assert err.line == line_of(broken, needle), str(err)
    assert words in str(err)
    assert f"probe/en.mjml, locale en, line {err.line}" in str(err)


def test_unknown_variable_fails_at_compile_time_even_in_an_unused_branch(tmp_path):
    body = GOOD_BODY.replace("<mj-text>{{ note }}</mj-text>", "<mj-text>{{ nte }}</mj-text>")
    # When the variable sits in a branch the data never reaches (note is absent)
    err = render_error(tmp_path, body)
    # Then the mistake is still found, with its name and line
    assert err.field == "nte"
    assert err.line == line_of(body, "{{ nte }}")
    assert "unknown variable 'nte'" in str(err)


def test_unknown_attribute_at_render_time_names_the_line(tmp_path):
    body = GOOD_BODY.replace("<mj-text>{{ note }}</mj-text>",
                             "<mj-text>{% for i in items %}{{ i.nmae }}{% endfor %}</mj-text>").replace(
        "{% if note %}", "{% if items %}")
    err = render_error(tmp_path, body, data={"order_number": "A-1", "items": [{"name": "Shirt"}]})
    assert err.field == "nmae"
    assert err.line == line_of(body, "i.nmae")
    assert "undefined variable" in str(err)


def test_mistake_in_a_layout_names_the_layout_file(tmp_path):
    make_kind(tmp_path, GOOD_BODY)
    base = tmp_path / "_layouts" / "base.mjml"
    text = base.read_text(encoding="utf-8").replace("<mj-title>{{ subject }}</mj-title>",
                                                    "<mj-title>{{ subject }</mj-title>")
    base.write_text(text, encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        Renderer(make_settings(templates_dir=tmp_path)).render("probe", "en", {"order_number": "A-1"})
    assert info.value.template == str(base)
    assert info.value.line == line_of(text, "{{ subject }</mj-title>")


def test_layout_string_missing_names_the_layout_line(tmp_path):
    make_kind(tmp_path, GOOD_BODY)
    base = tmp_path / "_layouts" / "base.mjml"
    text = base.read_text(encoding="utf-8").replace("[[ t.unsubscribe ]]", "[[ t.unsubscrib ]]")
    base.write_text(text, encoding="utf-8")
    toml = KIND_TOML.replace('purpose = "transactional"', 'purpose = "newsletter"')
    make_kind(tmp_path, GOOD_BODY, toml=toml)
    with pytest.raises(TemplateError) as info:
        Renderer(make_settings(templates_dir=tmp_path)).render("probe", "en", {"order_number": "A-1"})
    assert info.value.template == str(base)
    assert info.value.line == line_of(text, "t.unsubscrib ")
    assert "unsubscrib" in str(info.value)


def test_jinja_directly_in_a_wrapper_is_refused_with_a_reason(tmp_path):
    body = GOOD_BODY.replace("<mj-section>\n  <mj-column>", "<mj-wrapper>\n{% if note %}\n<mj-section>\n  <mj-column>"
                             ).replace("</mj-section>\n[% endblock %]", "</mj-section>\n{% endif %}\n</mj-wrapper>\n[% endblock %]")
    err = render_error(tmp_path, body)
    assert "inside <mj-wrapper>" in str(err)
    assert err.line == line_of(body, "{% if note %}")


def test_at_rules_cannot_be_inlined(tmp_path):
    body = GOOD_BODY.replace("[% block content %]", "[% block head %]<mj-style inline=\"inline\">@media (max-width: 400px) { p { color: red } }</mj-style>[% endblock %]\n[% block content %]")
    err = render_error(tmp_path, body)
    assert "@media" in str(err)


def test_missing_required_field_names_the_field(tmp_path):
    make_kind(tmp_path, GOOD_BODY)
    renderer = Renderer(make_settings(templates_dir=tmp_path))
    with pytest.raises(MissingField) as info:
        renderer.render("probe", "en", {"note": "x"})
    assert info.value.field == "data.order_number"
    # And a list item without a required key names the item
    with pytest.raises(MissingField) as info:
        renderer.validate("probe", {"order_number": "1", "items": [{"name": "a"}, {"price": 2}]})
    assert info.value.field == "data.items[1].name"
    # And a value of the wrong type names the field
    with pytest.raises(ValidationError) as info:
        renderer.validate("probe", {"order_number": "1", "items": [{"name": "a", "price": "cheap"}]})
    assert info.value.field == "data.items[0].price"
    with pytest.raises(ValidationError) as info:
        renderer.validate("probe", {"order_number": "1", "items": "not a list"})
    assert info.value.field == "data.items"


def test_every_missing_required_field_is_named_at_once(tmp_path):
    """Given a kind with four required fields, when data lacks all of them and has a
    mistyped optional one, then one error names every problem, in ``problems``."""
    renderer = Renderer(make_settings())
    with pytest.raises(MissingField) as info:
        renderer.validate("reward_code", {"code": "", "extra_ignored": 1})
    err = info.value
    fields = [f for f, _ in err.problems]
    assert fields == ["data.code", "data.value", "data.value_type", "data.reason"]
    assert err.field == "data.code"
    assert all(repr(n) in str(err) for n in ("code", "value", "value_type", "reason"))
    # And a missing field and a wrongly typed one are both reported
    with pytest.raises(ValidationError) as info:
        renderer.validate("order_delayed", {"new_eta": "next week"})
    assert [f for f, _ in info.value.problems] == ["data.order_number", "data.new_eta"]


def test_shipped_kinds_validate_types(tmp_path):
    renderer = Renderer(make_settings())
    sample = renderer.sample("csat_survey")
    with pytest.raises(ValidationError) as info:
        renderer.validate("csat_survey", dict(sample, rating_urls=sample["rating_urls"][:4]))
    assert info.value.field == "data.rating_urls" and "exactly 5" in str(info.value)
    with pytest.raises(ValidationError) as info:
        renderer.validate("shipping_update", dict(renderer.sample("shipping_update"), status="lost_in_space"))
    assert info.value.field == "data.status" and "in_transit" in str(info.value)
    with pytest.raises(ValidationError) as info:
        renderer.validate("order_delayed", {"order_number": "1", "new_eta": "next week"})
    assert info.value.field == "data.new_eta"


def test_no_half_rendered_mail_when_a_late_part_fails(tmp_path):
    # Given a template whose very last element fails for this data (a money value that is not a number)
    toml = KIND_TOML.replace('optional = ["items", "note"]', 'optional = ["items", "note", "total"]')
    body = GOOD_BODY.replace("[% endblock %]", "<mj-section><mj-column><mj-text>{{ total | money }}</mj-text>"
                                               "</mj-column></mj-section>\n[% endblock %]")
    make_kind(tmp_path, body, toml=toml)
    renderer = Renderer(make_settings(templates_dir=tmp_path))
    # When it renders, it raises instead of returning a truncated mail
    with pytest.raises(TemplateError) as info:
        renderer.render("probe", "en", {"order_number": "A-1", "total": "a lot"})
    assert "a lot" in str(info.value) and info.value.locale == "en"


def test_bad_template_fails_at_enqueue_and_stores_nothing(tmp_path, db_url):
    # Given an app whose probe template cannot render this data
    toml = KIND_TOML.replace('optional = ["items", "note"]', 'optional = ["items", "note", "total"]')
    body = GOOD_BODY.replace("<mj-text>{{ note }}</mj-text>", "<mj-text>{{ note }} {{ total | money }}</mj-text>")
    make_kind(tmp_path, body, toml=toml)
    settings = make_settings(database_url=db_url, templates_dir=tmp_path)
    app = App(settings)
    previous = set_app(app)
    try:
        from mailer.worker.actors import setup

        setup(settings)
        from mailer.notices.trigger import notify

        # When a notice is triggered with that data
        with pytest.raises(TemplateError) as info:
            notify("probe", to="ann@example.com", data={"order_number": "A-1", "note": "x", "total": "n/a"},
                   settings=settings)
        # Then the error names the template and nothing was stored
        assert "probe/en.mjml" in str(info.value)
        with app.session() as s:
            assert s.execute(select(func.count()).select_from(Delivery)).scalar_one() == 0
    finally:
        app.close()
        set_app(previous)
