"""Template text from outside the repository is data, never code.

Known server-side template injection payloads are refused at ``campaign create`` (the
Python service and the CLI), at preview and in the worker, naming the field and locale,
and nothing runs (a marker file a payload would create never appears).  Repository
templates render in the same sandbox with the same autoescaping.  Every CLI ``--locale``
follows the API's rule.
"""

from __future__ import annotations

import dramatiq
import jinja2
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from mailer.app import App, set_app
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.cli import main
from mailer.delivery import process as send_path
from mailer.errors import TemplateTextError
from mailer.models import Campaign, Delivery, DeliveryStatus
from mailer.queue.broker import QUEUES
from mailer.worker.actors import setup
from mailer.rendering import Renderer, i18n
from mailer.rendering.sandbox import MAX_SEQUENCE_ITEMS, SafeEnvironment
from mailer.transport import memory
from tests.campaign_support import NEWS_KIND, add_customer, newsletter_templates
from tests.conftest import make_settings


def payloads(marker) -> list[str]:
    """SSTI payloads; the first ones would create ``marker`` if they ever ran."""
    cmd = f"touch {marker}"
    return [
        f"{{{{ cycler.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        f"{{{{ joiner.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        f"{{{{ namespace.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        f"{{{{ lipsum.__globals__['os'].popen('{cmd}').read() }}}}",
        f"{{{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ self.__init__.__globals__ }}",
        "{{ config }}",
        "{{ request }}",
        "{{ lipsum.__globals__ }}",
        "{{ joiner.__init__.__globals__ }}",
        "{% for x in ().__class__.__base__.__subclasses__() %}{% endfor %}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ ()|attr('__class__') }}",
        "{{ headline|attr('__class__') }}",
        "{{ headline['__class__'] }}",
        "{{ '%s'|format(headline) }}",
        "{{ '%s' % headline }}",
        '{{ "{0.__class__}".format(headline) }}',
        "{{ range(10**9)|list }}",
        "{{ 'a'*10**9 }}",
        "{{ 'x' * 100000000 }}",
        "{{ headline * 100000000 }}",
        "{{ 'x' * 99999 ~ 'y' * 99999 }}",
        "{% set a = 'x' %}{{ a }}",
        "{% for a in headline %}{% for b in headline %}xxxxxxxx{% endfor %}{% endfor %}",
        "{{ headline | nosuchfilter }}",
        "{{ no_such_name }}",
        "{{ headline }",
    ]


@pytest.fixture
def env(db_url, tmp_path):
    memory.clear()
    send_path.campaign_options.cache_clear()
    settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path), batch_size=2)
    app = App(settings)
    previous = set_app(app)
    with app.session() as s:
        add_customer(s, settings, "ann@example.com", locale="pl")
    yield app
    app.close()
    set_app(previous)
    send_path.campaign_options.cache_clear()


def _create(app, subjects) -> int:
    with app.session() as s:
        return campaigns.create(s, app.settings, app.renderer, name="Spring", template=NEWS_KIND,
                                segment="newsletter_all", subjects=subjects, data={"headline": "Spring sale"}).id


def _campaign_count(app) -> int:
    with app.session() as s:
        return s.execute(select(func.count()).select_from(Campaign)).scalar_one()


def _cli_env(app) -> dict:
    s = app.settings
    return {"MAILER_DATABASE_URL": s.database_url, "MAILER_BROKER_URL": "stub://", "MAILER_SMTP_URL": "memory://cli",
            "MAILER_SECRET_KEY": s.secret_key, "MAILER_TEMPLATES_DIR": str(s.templates_dir),
            "MAILER_SEGMENTS_DIR": str(s.segments_dir), "COLUMNS": "200"}


# -- campaign create: the Python service ------------------------------------------------------------
def test_every_payload_is_refused_by_the_service_naming_field_and_locale(env, tmp_path):
    """Given a customer reading Polish, when a campaign is created with an injection payload as its
    Polish subject, then TemplateTextError names subject[pl], nothing is stored and nothing ran."""
    marker = tmp_path / "pwned"
    for payload in payloads(marker):
        with pytest.raises(TemplateTextError) as info:
            _create(env, {"pl": payload})
        assert info.value.field == "subject[pl]", payload
        assert "subject[pl]" in str(info.value)
    assert _campaign_count(env) == 0
    assert not marker.exists()


def test_a_payload_for_every_locale_is_refused_too(env, tmp_path):
    """Given --subject without a locale, when it is a payload, then the error names subject[*]."""
    marker = tmp_path / "pwned"
    with pytest.raises(TemplateTextError) as info:
        _create(env, {"*": payloads(marker)[0]})
    assert info.value.field == "subject[*]"
    assert _campaign_count(env) == 0 and not marker.exists()


def test_documented_subjects_still_work(env):
    """Given subjects using data fields, context names, filters and {% if %}, when created, then stored."""
    cid = _create(env, {"*": "{% if first_name %}{{ first_name | upper }}, {% endif %}{{ headline | truncate(40) }}",
                        "pl": "{{ store_name }}: {{ headline }}{% if currency is defined %} ({{ currency }}){% endif %}"})
    with env.session() as s:
        assert s.get(Campaign, cid).subjects["pl"].startswith("{{ store_name }}")


# -- campaign create: the CLI -----------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 5, 6, 11, 13, 16, 18, 20, 27])
def test_cli_create_refuses_payloads(env, tmp_path, index):
    """Given the CLI, when campaign create gets a payload as --subject pl=..., then exit 2, the field is
    named, no traceback, nothing stored, nothing ran."""
    marker = tmp_path / "pwned"
    payload = payloads(marker)[index]
    res = CliRunner().invoke(main, ["campaign", "create", "--name", "x", "--template", NEWS_KIND,
                                    "--segment", "newsletter_all", "--subject", f"pl={payload}"], env=_cli_env(env))
    assert res.exit_code == 2, res.output
    assert "subject[pl]" in res.output and "Traceback" not in res.output
    assert _campaign_count(env) == 0 and not marker.exists()


# -- preview and send of a subject tampered with in the database --------------------------------------
def _tamper(app, cid: int, subject: str) -> None:
    with app.session() as s:
        s.execute(update(Campaign).where(Campaign.id == cid).values(subjects={"pl": subject, "en": subject}))
    send_path.campaign_options.cache_clear()


def test_preview_refuses_a_tampered_subject(env, tmp_path):
    """Given a valid campaign whose stored subject is edited behind the service's back, when previewed
    (service and CLI), then it is refused naming the subject, and nothing ran."""
    marker = tmp_path / "pwned"
    cid = _create(env, {"pl": "Nowości"})
    for payload in payloads(marker)[:6]:
        _tamper(env, cid, payload)
        with env.session() as s, pytest.raises(TemplateTextError) as info:
            campaigns.preview(s, env.settings, env.renderer,
                              cid, "ann@example.com")
        assert info.value.field == "subject[pl]"
    res = CliRunner().invoke(main, ["campaign", "preview", str(cid), "--email", "ann@example.com",
                                    "-o", str(tmp_path / "p.html")], env=_cli_env(env))
    assert res.exit_code == 2 and "subject[pl]" in res.output
    assert not marker.exists() and not (tmp_path / "p.html").exists()


def test_send_fails_a_tampered_subject_with_a_reason_and_runs_nothing(env, tmp_path):
    """Given a campaign whose stored subject became a payload after creation, when it is sent,
    then the delivery fails with the sandbox's reason, no mail goes out and nothing ran."""
    marker = tmp_path / "pwned"
    cid = _create(env, {"pl": "Nowości"})
    _tamper(env, cid, payloads(marker)[0])
    broker = setup(env.settings)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        with env.session() as s:
            campaigns.send(s, env.settings, cid)
        campaign_actors.start(env, cid)
        for _ in range(4):
            for q in QUEUES:
                broker.join(q, timeout=60_000, fail_fast=True)
            worker.join()
    finally:
        worker.stop()
        broker.close()
    with env.session() as s:
        rows = list(s.execute(select(Delivery).where(Delivery.campaign_id == cid)).scalars())
    assert len(rows) == 1
    assert rows[0].status is DeliveryStatus.failed and "subject[pl]" in (rows[0].reason or "")
    assert memory.outbox() == []
    assert not marker.exists()


# -- repository templates: the same sandbox, the same escaping ---------------------------------------
def test_repository_templates_render_sandboxed_with_the_same_autoescaping():
    """Given the renderer, then its environments are sandboxed; HTML escapes data and text does not."""
    r = Renderer(make_settings())
    assert isinstance(r.env, SafeEnvironment) and isinstance(r.text_env, SafeEnvironment)
    html = r.render("order_delayed", "en", {**r.sample("order_delayed"), "order_number": "<b>1</b>"},
                    context={"first_name": "<i>Ann</i>"})
    assert "&lt;b&gt;1&lt;/b&gt;" in html.html and "<b>1</b>" not in html.html
    assert "<b>1</b>" in html.text
    with pytest.raises(jinja2.exceptions.SecurityError):
        r.env.from_string("{{ ''.__class__.__mro__ }}{{ x.__class__.__mro__[1].__subclasses__() }}").render(x=1)


@pytest.mark.parametrize("source", ["{{ 'x' * 10**9 }}", "{{ [1] * 10**9 }}", "{{ range(10**9) | list }}",
                                    "{{ 2 ** 100000 }}", "{{ '%*d' % (10**9, 1) }}",
                                    "{{ ('x' * 60000) + ('x' * 60000) }}"])
def test_repository_environment_bounds_big_values(source):
    """Given the per-recipient sandbox, when an expression would build a huge value, then it is refused."""
    env = Renderer(make_settings()).env
    with pytest.raises((jinja2.exceptions.SecurityError, OverflowError)):
        env.from_string(source).render()
    assert env.from_string("{{ ('x' * n) | length }}").render(n=MAX_SEQUENCE_ITEMS) == str(MAX_SEQUENCE_ITEMS)


# -- --locale: the API's rule on the CLI ---------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["notify", "order_delayed", "--to", "bob@example.com", "--locale", "x;rm -rf"],
    ["notify", "order_delayed", "--to", "bob@example.com", "--locale", "pl-" + "A" * 40],
    ["preview", "order_delayed", "--locale", "../../etc"],
    ["templates", "check", "--locale", "en", "--locale", "{{ 7*7 }}"],
])
def test_bad_locale_is_a_usage_error_naming_the_option(env, tmp_path, args):
    """Given a bad --locale, then exit code 2 names --locale and nothing is stored or written."""
    res = CliRunner().invoke(main, args, env=_cli_env(env))
    assert res.exit_code == 2, res.output
    assert "--locale" in res.output
    with env.session() as s:
        assert s.execute(select(func.count()).select_from(Delivery)).scalar_one() == 0


def test_cli_and_api_share_one_locale_rule():
    """Given the one rule in mailer.i18n, then the API model uses the same pattern and length."""
    from mailer.web.api.notices import NoticeIn

    field = NoticeIn.model_fields["locale"]
    assert i18n.LOCALE_PATTERN in str(field.metadata) and str(i18n.MAX_LOCALE_CHARS) in str(field.metadata)
    assert all(i18n.is_valid_locale(v) for v in ("pl", "zh-TW", "pt_BR", "zh-Hant-TW"))
    assert not any(i18n.is_valid_locale(v) for v in ("", "p", "x;y", "zh-TW\n", "a" * 21, "en-" + "A" * 17))
