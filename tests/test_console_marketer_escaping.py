"""Text from outside is shown as text on every marketer page: a campaign name and subject, a
segment's description, a template's description and subject, a customer's name, a rule's text."""

from __future__ import annotations

import shutil

import pytest

from mailer.settings import PROJECT_ROOT
from mailer.worker.actors import setup
from tests.campaign_support import NEWS_KIND, add_customer, newsletter_templates
from tests.conftest import make_settings

XSS = "<script>alert(1)</script>"


@pytest.fixture
def settings(db_url, tmp_path):
    """Templates and segments with markup in the texts people wrote."""
    templates = newsletter_templates(tmp_path)
    kind = templates / "newsletter" / "test_news" / "kind.toml"
    kind.write_text(kind.read_text(encoding="utf-8").replace('description = "Test newsletter"',
                                                             f'description = "{XSS}"'), encoding="utf-8")
    segments = tmp_path / "segments"
    shutil.copytree(PROJECT_ROOT / "segments", segments)
    (segments / "xss.toml").write_text(f'description = "{XSS}"\npurpose = "newsletter"\n', encoding="utf-8")
    return make_settings(database_url=db_url, templates_dir=templates, segments_dir=segments)


def test_every_marketer_page_shows_outside_text_as_text(app, console_as):
    setup(app.settings)
    with app.session() as s:
        add_customer(s, app.settings, "xss@example.com", locale="en", first_name=XSS)
    client = console_as("marketer")
    # Given a campaign whose name and subject hold markup (the subject grammar allows plain text)
    r = client.post("/console/campaigns", follow_redirects=False, data={
        "csrf_token": client.csrf_token, "name": XSS, "template": NEWS_KIND, "segment": "xss", "when": "now",
        "subject_en": "Hi <b>" + XSS, "tracking": "on"})
    assert r.status_code == 303, r.text
    cid = int(r.headers["location"].split("/")[3].split("?")[0])
    # When each marketer page that shows them is opened
    pages = ["/console/campaigns", f"/console/campaigns/{cid}", f"/console/campaigns/{cid}/preview?locale=en",
             f"/console/campaigns/{cid}/report", f"/console/campaigns/{cid}/confirm/send",
             f"/console/campaigns/{cid}/progress", "/console/campaigns/new?segment=xss",
             f"/console/campaigns/new/segment?segment=xss&template={NEWS_KIND}",
             "/console/segments", "/console/segments/xss", f"/console/templates?kind={NEWS_KIND}&locale=en",
             "/console/automations"]
    for path in pages:
        page = client.get(path)
        # Then the markup never reaches the page as markup, and is there as text where it is shown
        assert page.status_code == 200, path
        assert XSS not in page.text, path
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in client.get("/console/campaigns").text                      # campaign name
    assert escaped in client.get(f"/console/campaigns/{cid}").text               # name and subject
    assert escaped in client.get(f"/console/campaigns/{cid}/preview?locale=en").text  # rendered subject
    assert escaped in client.get("/console/segments").text                       # segment description
    assert escaped in client.get("/console/segments/xss").text                   # member's name
    assert escaped in client.get(f"/console/templates?kind={NEWS_KIND}&locale=en").text  # template description
