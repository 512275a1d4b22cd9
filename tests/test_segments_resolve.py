"""Segment resolution: consent required, suppressions excluded, keyset streaming, shipped files, clear errors."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy import event, select

from mailer import db, segments
from mailer.cli import main
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.customers.records import get_or_create, import_file
from mailer.errors import SegmentError
from mailer.models import Customer
from mailer.settings import PROJECT_ROOT
from tests.conftest import make_settings

DEMO = PROJECT_ROOT / "mailer" / "demo_data" / "customers.csv"
#: The demo data's dates are around this moment.
DEMO_NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
SHIPPED = ("vip", "first_time_buyers", "high_spend_tier", "lapsed_90_days", "newsletter_all")


def _grant(s, settings, email, purpose="newsletter", basis="consent"):
    c = get_or_create(s, settings, email)
    consent.append(s, settings, customer=c, purpose=purpose, action="granted", source="signup_form", basis=basis)
    return c


def test_shipped_segments_load_and_resolve_like_their_python_evaluation(settings):
    # Given the demo customers, all but one of whom consent to the newsletter
    import_file(settings, DEMO)
    with db.session_scope(settings) as s:
        people = list(s.execute(select(Customer).order_by(Customer.id)).scalars())
        for c in people:
            if c.email != "wei@example.com":
                consent.append(s, settings, customer=c, purpose="newsletter", action="granted", source="import")
    names = {seg.name for seg in segments.list_segments(settings)}
    assert set(SHIPPED) <= names
    with db.session_scope(settings) as s:
        people = list(s.execute(select(Customer).order_by(Customer.id)).scalars())
        for name in SHIPPED:
            seg = segments.load(settings, name)
            assert seg.purpose == "newsletter" and seg.path.name == f"{name}.toml"
            # When each shipped segment is counted and streamed
            expected = [c.email for c in people if c.email != "wei@example.com"
                        and segments.evaluate(seg.conditions or None, c, now=DEMO_NOW, session=s)]
            streamed = [r.email for page in segments.stream(s, settings, seg, now=DEMO_NOW) for r in page]
            # Then SQL resolution equals the Python reading of the same file
            assert segments.count(s, settings, seg, now=DEMO_NOW) == len(expected), name
            assert streamed == expected, name
        vip = [r.email for r in segments.sample(s, settings, segments.load(settings, "vip"), 10, now=DEMO_NOW)]
        assert vip == ["alice@example.com", "mei@example.com", "jiwoo@example.com", "layla@example.com"]
        first = [r.email for r in segments.sample(s, settings, segments.load(settings, "first_time_buyers"),
                                                  now=DEMO_NOW)]
        assert first == ["lukasz@example.com"]
        lapsed = [r.email for r in segments.sample(s, settings, segments.load(settings, "lapsed_90_days"),
                                                   now=DEMO_NOW)]
        assert lapsed == ["jiwoo@example.com", "camille@example.com"]  # wei lapsed too, but gave no consent


def test_resolution_requires_current_consent_for_the_segments_purpose(db_url):
    settings = make_settings(database_url=db_url)
    no_soft = make_settings(database_url=db_url, soft_opt_in=False)
    with db.session_scope(settings) as s:
        a = _grant(s, settings, "a@example.com")
        _grant(s, settings, "b@example.com", purpose="loyalty")  # other purpose only
        c = _grant(s, settings, "c@example.com")
        consent.withdraw(s, settings, customer=c, purpose="newsletter", source="unsubscribe_link")
        d = _grant(s, settings, "d@example.com", basis="soft_opt_in")
        get_or_create(s, settings, "e@example.com")  # never asked
    seg = segments.load(settings, "newsletter_all")
    with db.session_scope(settings) as s:
        # Then only current newsletter consent counts; soft opt-in only while the deployment allows it
        assert [r.customer_id for p in segments.stream(s, settings, seg) for r in p] == [a.id, d.id]
        assert [r.customer_id for p in segments.stream(s, no_soft, seg) for r in p] == [a.id]
        assert segments.count(s, no_soft, seg) == 1
        assert segments.contains(s, settings, seg, d.id) and not segments.contains(s, no_soft, seg, d.id)


@pytest.mark.parametrize("scope, excluded", [("all", True), ("marketing", True), ("newsletter", True),
                                             ("loyalty", False)])
def test_suppressions_always_win(db_url, scope, excluded):
    settings = make_settings(database_url=db_url)
    with db.session_scope(settings) as s:
        a = _grant(s, settings, "a@example.com")
        _grant(s, settings, "b@example.com")
        suppressions.suppress(s, address_hash=a.email_hash, email=a.email, reason="manual", scope=scope)
    seg = segments.load(settings, "newsletter_all")
    with db.session_scope(settings) as s:
        emails = [r.email for p in segments.stream(s, settings, seg) for r in p]
        assert ("a@example.com" not in emails) is excluded
        assert "b@example.com" in emails
        assert segments.count(s, settings, seg) == (1 if excluded else 2)


def test_stream_is_keyset_paginated_lazy_and_resumable(db_url):
    settings = make_settings(database_url=db_url)
    with db.session_scope(settings) as s:
        ids = [_grant(s, settings, f"p{i:02d}@example.com").id for i in range(23)]
        get_or_create(s, settings, "outsider@example.com")
    seg = segments.load(settings, "newsletter_all")
    engine = db.get_engine(settings)
    statements: list[str] = []

    def spy(conn, cursor, statement, params, context, executemany):
        if "consent_state" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", spy)
    try:
        with db.session_scope(settings) as s:
            pages = segments.stream(s, settings, seg, batch_size=5)
            # When the first page is taken, exactly one query ran: nothing is fetched ahead
            first = next(pages)
            assert len(statements) == 1 and len(first) == 5
            rest = list(pages)
        # Then pages hold batch_size recipients (the last fewer), in increasing id order, each once
        got = [r.customer_id for r in first] + [r.customer_id for p in rest for r in p]
        assert got == ids
        assert [len(p) for p in [first, *rest]] == [5, 5, 5, 5, 3]
        # And every query reads ids after the last one seen (keyset): the first page, then
        # one window (its upper id, its recipients) holding the remaining 18
        assert len(statements) == 3 and all("consent_state.customer_id >" in q for q in statements)
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    with db.session_scope(settings) as s:
        # And a fan-out can resume after the last id it handled
        resumed = [r.customer_id for p in segments.stream(s, settings, seg, after_id=ids[11], batch_size=100)
                   for r in p]
        assert resumed == ids[12:]
        r = next(segments.stream(s, settings, seg, batch_size=1))[0]
        assert (r.email, r.locale, r.currency) == ("p00@example.com", None, None)
        assert r.email_hash == s.get(Customer, r.customer_id).email_hash


def _segdir(tmp_path: Path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return make_settings(segments_dir=tmp_path)


@pytest.mark.parametrize("text, needles", [
    ('purpose = "newsletter"\n[where]\ntotal_spend = { gt = 1 }\n',
     ["where.total_spend", "unknown field 'total_spend'", "allowed fields: tags (any, all, none)", "engagement"]),
    ('purpose = "newsletter"\n[where]\ntotal_spent = { above = 1 }\n',
     ["where.total_spent.above", "unknown operator 'above'", "allowed: eq, gt, gte, lt, lte"]),
    ('purpose = "newsletter"\n[where]\norders_count = { eq = "one" }\n', ["where.orders_count.eq", "whole number"]),
    ('purpose = "newsletter"\n[where]\nany = [ { locale = "en" }, { country = { eq = "Poland" } } ]\n',
     ["where.any[1].country.eq", "two letters"]),
    ('purpose = "newsletter"\n[where]\ntotal_spent = { gt = 10.005 }\n', ["where.total_spent.gt", "2 decimal"]),
    ('purpose = "newsletter"\n[where]\nlast_order_at = { within_days = -3 }\n',
     ["where.last_order_at.within_days", "whole number of days"]),
    ('purpose = "newsletter"\n[where]\nany = []\n', ["where.any", "non-empty list"]),
    ('purpose = "newsletter"\nwhere = "total_spent > 5"\n', ["where", "non-empty table"]),
    ('[where]\ntags = { any = ["VIP"] }\n', ["purpose", "required"]),
    ('purpose = "spam"\n', ["purpose", "unknown consent purpose 'spam'"]),
    ('purpose = "newsletter"\nsql = "select * from customers"\n', ["sql", "unknown key", "allowed keys"]),
    ('purpose = "newsletter"\n[where\n', ["TOML syntax", "line 2"]),
], ids=["field", "operator", "value", "nested", "decimals", "days", "empty-any", "not-a-table", "no-purpose",
        "bad-purpose", "raw-sql", "toml-syntax"])
def test_invalid_segment_files_get_errors_naming_file_key_and_allowed_values(tmp_path, text, needles):
    settings = _segdir(tmp_path, {"broken.toml": text})
    with pytest.raises(SegmentError) as err:
        segments.load(settings, "broken")
    message = str(err.value)
    assert str(tmp_path / "broken.toml") in message
    for needle in needles:
        assert needle in message, message


def test_yaml_segments_and_their_syntax_errors(tmp_path):
    settings = _segdir(tmp_path, {
        "engaged.yaml": "purpose: newsletter\nwhere:\n  engagement:\n    clicked_within_days: 14\n",
        "bad.yml": "purpose: newsletter\nwhere:\n  tags: [VIP\n",
    })
    seg = segments.load(settings, "engaged")
    assert seg.conditions == ("engagement", "clicked_within_days", 14)
    with pytest.raises(SegmentError, match=r"bad\.yml: YAML syntax \(line \d+, column \d+\)"):
        segments.load(settings, "bad")
    with pytest.raises(SegmentError, match="unknown segment 'nope'.*known segments: bad, engaged"):
        segments.load(settings, "nope")


def test_cli_lists_and_shows_segments_with_count_and_sample(settings, tmp_path):
    import_file(settings, DEMO)
    with db.session_scope(settings) as s:
        for email in ("alice@example.com", "layla@example.com", "wei@example.com"):
            _grant(s, settings, email)
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key,
           "MAILER_SEGMENTS_DIR": str(PROJECT_ROOT / "segments"), "COLUMNS": "200"}
    runner = CliRunner()
    listed = runner.invoke(main, ["segments", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    for name in SHIPPED:
        assert name in listed.output
    shown = runner.invoke(main, ["segments", "show", "vip", "--count", "--sample", "10"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "count:     2 recipients" in shown.output
    assert "alice@example.com" in shown.output and "layla@example.com" in shown.output
    assert "wei@example.com" not in shown.output
    # An invalid file: list names it and exits 1; show refuses it with exit 2
    (tmp_path / "oops.toml").write_text('purpose = "newsletter"\n[where]\nspend = { gt = 1 }\n', encoding="utf-8")
    env["MAILER_SEGMENTS_DIR"] = str(tmp_path)
    listed = runner.invoke(main, ["segments", "list"], env=env)
    assert listed.exit_code == 1 and "oops.toml" in listed.output and "where.spend" in listed.output
    shown = runner.invoke(main, ["segments", "show", "oops"], env=env)
    assert shown.exit_code == 2 and "unknown field 'spend'" in shown.output


def test_engagement_segment_uses_opens_and_clicks_but_not_machine_opens(db_url):
    from mailer.clock import utcnow
    from mailer.models import TrackingEvent

    settings = make_settings(database_url=db_url)
    with db.session_scope(settings) as s:
        human = _grant(s, settings, "human@example.com")
        bot = _grant(s, settings, "bot@example.com")
        s.add_all([TrackingEvent(customer_id=human.id, kind="open", occurred_at=utcnow()),
                   TrackingEvent(customer_id=bot.id, kind="machine_open", occurred_at=utcnow())])
    seg = segments.load(settings, "engaged_30_days")
    with db.session_scope(settings) as s:
        assert [r.email for p in segments.stream(s, settings, seg) for r in p] == ["human@example.com"]
        assert s.execute(sa.select(sa.func.count()).select_from(TrackingEvent)).scalar_one() == 2


def test_every_resolution_path_confirms_each_state_row_by_the_grant_it_names(db_url):
    """The first page, the windows after it, count and contains agree on who is in."""
    from tests.consent_support import unprotected

    settings = make_settings(database_url=db_url)
    with db.session_scope(settings) as s:
        # Given a customer who withdrew and granted again, one suppressed, one whose only
        # newsletter grant is repointed (triggers off) at another customer's grant, one whose
        # state row is repointed at their own loyalty grant, and plain subscribers around them
        people = {name: _grant(s, settings, f"{name}@example.com")
                  for name in ("p0", "regranted", "p1", "suppressed", "p2", "stolen", "p3", "wrong_purpose", "p4")}
        consent.withdraw(s, settings, customer=people["regranted"], purpose="newsletter", source="unsubscribe_link")
        consent.append(s, settings, customer=people["regranted"], purpose="newsletter", action="granted",
                       source="signup_form")
        suppressions.suppress(s, address_hash=people["suppressed"].email_hash, email="suppressed@example.com",
                              reason="manual", scope="all")
        consent.withdraw(s, settings, customer=people["stolen"], purpose="newsletter", source="unsubscribe_link")
        consent.withdraw(s, settings, customer=people["wrong_purpose"], purpose="newsletter",
                         source="unsubscribe_link")
        consent.append(s, settings, customer=people["wrong_purpose"], purpose="loyalty", action="granted",
                       source="signup_form")
        ids = {name: c.id for name, c in people.items()}
    true = "1" if db_url.startswith("sqlite") else "true"
    with unprotected(db_url) as conn:
        grant_p0 = conn.exec_driver_sql(f"SELECT event_id FROM consent_state WHERE customer_id = {ids['p0']}"
                                        " AND purpose = 'newsletter'").scalar_one()
        loyalty = conn.exec_driver_sql(f"SELECT event_id FROM consent_state WHERE customer_id = "
                                       f"{ids['wrong_purpose']} AND purpose = 'loyalty'").scalar_one()
        conn.exec_driver_sql(f"UPDATE consent_state SET granted = {true}, event_id = {grant_p0} "
                             f"WHERE customer_id = {ids['stolen']} AND purpose = 'newsletter'")
        conn.exec_driver_sql(f"UPDATE consent_state SET granted = {true}, event_id = {loyalty} "
                             f"WHERE customer_id = {ids['wrong_purpose']} AND purpose = 'newsletter'")
    seg = segments.load(settings, "newsletter_all")
    expected = [ids[n] for n in ("p0", "regranted", "p1", "p2", "p3", "p4")]
    with db.session_scope(settings) as s:
        # When the segment is streamed one recipient per page (first page, then windows),
        # in one page, counted, and asked about each customer
        one_by_one = [r.customer_id for p in segments.stream(s, settings, seg, batch_size=1) for r in p]
        at_once = [r.customer_id for p in segments.stream(s, settings, seg) for r in p]
        # Then each path keeps exactly the confirmed, unsuppressed grants, the regranted customer once
        assert one_by_one == at_once == expected
        assert segments.count(s, settings, seg) == len(expected)
        assert {n for n, cid in ids.items() if segments.contains(s, settings, seg, cid)} == {
            "p0", "regranted", "p1", "p2", "p3", "p4"}
