"""Property tests: the segment compiler's SQL selects exactly the customers plain Python selects.

Random customers (tags, amounts, order counts, tiers, dates on and around the cut-offs,
locales, countries, opens and clicks) and random condition trees (every field and
operator, ``all``/``any``/``not``) on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mailer import db, segments
from mailer.models import Customer, CustomerTag, TrackingEvent
from mailer.segments import resolve as segments_resolve
from tests.conftest import make_settings

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)
TAGS = ["VIP", "newsletter", "first_time", "lapsed", "vip"]
AMOUNTS = [Decimal(x) for x in ("0", "0.01", "10.10", "99.99", "100", "1000", "1000.01", "2500.50")]
LOCALES = [None, "en", "pl", "pl-PL", "plx", "zh-TW", "zh-CN", "ko", "fr", "ar"]
COUNTRIES = [None, "PL", "TW", "KR", "FR", "AE"]
TIERS = [None, "high", "medium", "low"]
#: Few distinct day counts, so customers often sit exactly on a condition's cut-off.
DAYS = st.sampled_from([0, 7, 30, 31])


def _moment(days: int, micro: int) -> datetime:
    return NOW - timedelta(days=days) + timedelta(microseconds=micro)


moments = st.builds(_moment, DAYS, st.sampled_from([0, 0, 0, 1, -1, -500_000]))

customers = st.lists(st.fixed_dictionaries({
    "tags": st.lists(st.sampled_from(TAGS), unique=True, max_size=3),
    "total_spent": st.sampled_from(AMOUNTS),
    "orders_count": st.integers(0, 4),
    "predicted_spend_tier": st.sampled_from(TIERS),
    "last_order_at": st.one_of(st.none(), moments),
    "created_at": moments,
    "locale": st.sampled_from(LOCALES),
    "country": st.sampled_from(COUNTRIES),
    "tracking": st.lists(st.tuples(st.sampled_from(["open", "click", "machine_open", "unsubscribe"]), moments),
                         max_size=3),
}), min_size=4, max_size=12)


def _leaf():
    tag_list = st.lists(st.sampled_from(TAGS), min_size=1, max_size=3, unique=True)
    num = st.sampled_from(["eq", "gt", "gte", "lt", "lte"])
    # One leaf kind drawn uniformly first (st.one_of favours its first branches when shrinking).
    return st.sampled_from([
        st.builds(lambda op, v: {"tags": {op: v}}, st.sampled_from(["any", "all", "none"]), tag_list),
        st.builds(lambda op, v: {"total_spent": {op: v}}, num, st.sampled_from(AMOUNTS)),
        st.builds(lambda op, v: {"total_spent": {op: float(v)}}, num, st.sampled_from(AMOUNTS)),
        st.builds(lambda op, v: {"orders_count": {op: v}}, num, st.integers(0, 4)),
        st.builds(lambda v: {"orders_count": v}, st.integers(0, 4)),
        st.builds(lambda v: {"predicted_spend_tier": {"eq": v}}, st.sampled_from(["high", "medium", "low"])),
        st.builds(lambda v: {"predicted_spend_tier": {"in": v}},
                  st.lists(st.sampled_from(["high", "medium", "low"]), min_size=1, max_size=2, unique=True)),
        st.builds(lambda f, op, d: {f: {op: d}}, st.sampled_from(["last_order_at", "created_at"]),
                  st.sampled_from(["within_days", "older_than_days"]), DAYS),
        st.builds(lambda v: {"locale": v}, st.sampled_from(["en", "pl", "pl-PL", "zh-TW"])),
        st.builds(lambda v: {"locale": {"in": v}},
                  st.lists(st.sampled_from(["en", "pl", "pl-PL", "ko", "ar"]), min_size=1, max_size=3, unique=True)),
        st.builds(lambda v: {"locale": {"language": v}}, st.sampled_from(["pl", "zh", "en", "ko"])),
        st.builds(lambda v: {"country": {"eq": v}}, st.sampled_from(["PL", "TW", "kr"])),
        st.builds(lambda v: {"country": {"in": v}},
                  st.lists(st.sampled_from(["PL", "TW", "KR", "FR"]), min_size=1, max_size=3, unique=True)),
        st.builds(lambda op, d: {"engagement": {op: d}},
                  st.sampled_from(["opened_within_days", "clicked_within_days", "within_days"]), DAYS),
    ]).flatmap(lambda leaf: leaf)


conditions = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
        st.builds(lambda a, b: {**a, **b}, inner, inner),  # several keys in one table: all must hold
    ),
    max_leaves=6,
)


def _load(conn, people: list[dict]) -> list[int]:
    conn.execute(sa.delete(TrackingEvent.__table__))
    conn.execute(sa.delete(CustomerTag.__table__))
    # Customers of an earlier example go; those with consent events stay (ledger history,
    # which the database refuses to delete) but are erased, so no segment can pick them.
    from mailer.models import ConsentEvent

    with_events = sa.select(ConsentEvent.__table__.c.customer_id).where(
        ConsentEvent.__table__.c.customer_id.is_not(None))
    conn.execute(sa.delete(Customer.__table__).where(Customer.__table__.c.id.not_in(with_events)))
    conn.execute(sa.update(Customer.__table__).values(email=None))
    first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(Customer.__table__.c.id), 0))).scalar_one() + 1
    ids = []
    for i, p in enumerate(people, start=first):
        conn.execute(sa.insert(Customer.__table__).values(
            id=i, email=f"c{i}@example.com", email_hash=f"{i:064d}", total_spent=p["total_spent"],
            orders_count=p["orders_count"], predicted_spend_tier=p["predicted_spend_tier"],
            last_order_at=p["last_order_at"], created_at=p["created_at"], updated_at=NOW, locale=p["locale"],
            country=p["country"], attributes={}))
        for tag in p["tags"]:
            conn.execute(sa.insert(CustomerTag.__table__).values(customer_id=i, tag=tag))
        for kind, when in p["tracking"]:
            conn.execute(sa.insert(TrackingEvent.__table__).values(customer_id=i, kind=kind, occurred_at=when))
        ids.append(i)
    return ids


@given(people=customers, cond=conditions)
@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
def test_sql_and_python_agree(db_url, people, cond):
    # Given random customers in the database
    engine = db.get_engine(db_url)
    with engine.begin() as conn:
        ids = _load(conn, people)
        # When a random condition is compiled to SQL (in each of its shapes: per-customer
        # probes or bulk subqueries, with or without the SQLite no-index hint) and run
        results = {}
        for unindexed in (False, True):
            for bulk in (False, True):
                clause = segments.compile_condition(cond, now=NOW, unindexed=unindexed, bulk=bulk)
                results[unindexed, bulk] = set(conn.execute(sa.select(Customer.__table__.c.id).where(clause))
                                               .scalars())
    # Then every shape selects exactly the customers the plain-Python evaluation selects
    in_python = {i for i, p in zip(ids, people) if segments.evaluate(cond, p, now=NOW)}
    for shape, in_sql in results.items():
        assert in_sql == in_python, (shape, cond, segments.describe(segments.validate_condition(cond)))


def test_day_boundaries_are_inclusive_for_within_and_exclusive_for_older_than(db_url):
    # Given customers created exactly 30 days ago, a microsecond later, and a microsecond earlier
    people = [{"tags": [], "total_spent": Decimal("0"), "orders_count": 0, "predicted_spend_tier": None,
               "last_order_at": None, "created_at": _moment(30, micro), "locale": None, "country": None,
               "tracking": [("open", _moment(30, micro))]} for micro in (0, 1, -1)]
    engine = db.get_engine(db_url)
    with engine.begin() as conn:
        ids = _load(conn, people)
        for cond, expected in (({"created_at": {"within_days": 30}}, {ids[0], ids[1]}),
                               ({"created_at": {"older_than_days": 30}}, {ids[2]}),
                               ({"engagement": {"opened_within_days": 30}}, {ids[0], ids[1]}),
                               ({"not": {"last_order_at": {"older_than_days": 30}}}, set(ids))):
            # Then SQL and Python agree with the documented boundaries
            for bulk in (False, True):
                got = set(conn.execute(sa.select(Customer.__table__.c.id)
                                       .where(segments.compile_condition(cond, now=NOW, bulk=bulk))).scalars())
                assert got == expected, (cond, bulk)
            assert {i for i, p in zip(ids, people) if segments.evaluate(cond, p, now=NOW)} == expected, cond


def test_evaluate_reads_orm_customers_and_queries_tracking(sqlite_url):
    # Given an ORM customer with tags and a recent click
    with db.session_scope(sqlite_url) as s:
        c = Customer(email="t@example.com", email_hash="1" * 64, total_spent=Decimal("5"), orders_count=1,
                     attributes={}, locale="pl-PL", created_at=NOW)
        s.add(c)
        s.flush()
        s.add(CustomerTag(customer_id=c.id, tag="VIP"))
        s.add(TrackingEvent(customer_id=c.id, kind="click", occurred_at=NOW - timedelta(days=2)))
        s.flush()
        s.refresh(c)
        cond = {"all": [{"tags": {"any": ["VIP"]}}, {"locale": {"language": "pl"}},
                        {"engagement": {"clicked_within_days": 7}}]}
        # Then evaluate agrees with SQL, reading tracking through the session
        assert segments.evaluate(cond, c, now=NOW, session=s)
        assert not segments.evaluate({"engagement": {"clicked_within_days": 1}}, c, now=NOW, session=s)
        assert s.execute(sa.select(sa.func.count()).select_from(Customer)
                         .where(segments.compile_condition(cond, now=NOW))).scalar_one() == 1


def _consent(conn, ids: list[int], consenting: list[bool], suppressed: list[bool]) -> None:
    """Newsletter consent events for the consenting customers (the database derives
    consent_state from them), suppressions for others."""
    from mailer.models import ConsentEvent, Suppression

    ev = ConsentEvent.__table__
    seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(ev.c.seq), 0))).scalar_one()
    conn.execute(sa.delete(Suppression.__table__))
    for i, yes, sup in zip(ids, consenting, suppressed):
        if yes:
            seq += 1
            conn.execute(sa.insert(ev).values(
                seq=seq, customer_id=i, subject_hash=f"{i:064d}", purpose="newsletter", action="granted",
                basis="consent", source="import", occurred_at=NOW, recorded_at=NOW, prev_hash="0" * 64,
                hash=f"{seq:064x}", chain_format=2))
        if sup:
            conn.execute(sa.insert(Suppression.__table__).values(email_hash=f"{i:064d}", reason="manual", scope="all",
                                                                 created_at=NOW))


@given(people=customers, cond=conditions, data=st.data())
@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
def test_streamed_and_counted_segments_equal_python(db_url, people, cond, data):
    # Given random customers, some consenting to the newsletter and some suppressed
    # Mostly consenting, a few suppressed: streams long enough to cross several windows.
    consenting = data.draw(st.lists(st.sampled_from([True, True, True, False]), min_size=len(people),
                                    max_size=len(people)))
    suppressed = data.draw(st.lists(st.sampled_from([False, False, False, True]), min_size=len(people),
                                    max_size=len(people)))
    batch = data.draw(st.integers(1, 4))
    factor = data.draw(st.sampled_from([1, 2, 16]))  # small windows: many window edges to get wrong
    settings = make_settings(database_url=db_url)
    engine = db.get_engine(db_url)
    with engine.begin() as conn:
        ids = _load(conn, people)
        _consent(conn, ids, consenting, suppressed)
    seg = segments.parse({"purpose": "newsletter", "where": cond}, settings=settings, name="random")
    # When the segment is streamed in small windows and counted
    saved, segments_resolve.WINDOW_MAX_FACTOR = segments_resolve.WINDOW_MAX_FACTOR, factor
    try:
        with db.session_scope(settings) as s:
            pages = list(segments.stream(s, settings, seg, batch_size=batch, now=NOW))
            counted = segments.count(s, settings, seg, now=NOW)
    finally:
        segments_resolve.WINDOW_MAX_FACTOR = saved
    # Then both equal the Python evaluation of consent, suppressions and the condition
    expected = [i for i, p, yes, sup in zip(ids, people, consenting, suppressed)
                if yes and not sup and segments.evaluate(cond, p, now=NOW)]
    assert [r.customer_id for page in pages for r in page] == expected
    assert all(len(page) == batch for page in pages[:-1]) and all(0 < len(page) <= batch for page in pages)
    assert counted == len(expected)


def test_window_edges_with_tag_and_engagement_conditions(db_url, monkeypatch):
    # Given 30 consenting customers: every other one tagged VIP, every third opened a mail
    people = [{"tags": ["VIP"] if i % 2 else [], "total_spent": Decimal("0"), "orders_count": 0,
               "predicted_spend_tier": None, "last_order_at": None, "created_at": _moment(7, 0), "locale": None,
               "country": None, "tracking": [("open", _moment(1, 0))] if i % 3 == 0 else []} for i in range(30)]
    settings = make_settings(database_url=db_url)
    with db.get_engine(db_url).begin() as conn:
        ids = _load(conn, people)
        _consent(conn, ids, [True] * 30, [False] * 30)
    monkeypatch.setattr(segments_resolve, "WINDOW_MAX_FACTOR", 1)  # windows of one batch: many window edges
    for cond in ({"tags": {"any": ["VIP"]}}, {"tags": {"none": ["VIP"]}}, {"tags": {"all": ["VIP"]}},
                 {"engagement": {"opened_within_days": 7}}, {"not": {"engagement": {"within_days": 7}}}):
        seg = segments.parse({"purpose": "newsletter", "where": cond}, settings=settings, name="edges")
        expected = [i for i, p in zip(ids, people) if segments.evaluate(cond, p, now=NOW)]
        for batch in (1, 2, 3, 7):
            # When streamed in windows of `batch` consenting customers
            with db.session_scope(settings) as s:
                got = [r.customer_id for page in segments.stream(s, settings, seg, batch_size=batch, now=NOW)
                       for r in page]
            # Then customers on a window's upper edge are neither lost nor duplicated
            assert got == expected, (cond, batch)
