"""Property tests: segment conditions on the prediction fields select in SQL exactly what plain Python selects.

``predicted_clv``, ``p_alive``, ``churn_risk``, ``expected_next_order_at`` and the
computed ``predicted_spend_tier`` (values on and around each cut-off, NULL for customers
the model did not score), mixed with ``all``/``any``/``not``, on SQLite and PostgreSQL:
the pattern of tests/test_segments_compiler.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mailer import db, segments
from mailer.errors import SegmentError
from mailer.models import ConsentEvent, Customer, CustomerTag, TrackingEvent

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)
CLVS = [0.0, 0.01, 10.1, 99.99, 100.0, 250.5]
PROBS = [0.0, 0.25, 0.33, 0.5, 0.66, 1.0]
DAYS = st.sampled_from([0, 7, 30])


def _moment(days: int, micro: int) -> datetime:
    return NOW + timedelta(days=days) + timedelta(microseconds=micro)


moments = st.builds(_moment, st.sampled_from([-30, -7, 0, 7, 30]), st.sampled_from([0, 0, 1, -1]))

people_st = st.lists(st.fixed_dictionaries({
    "predicted_clv": st.one_of(st.none(), st.sampled_from(CLVS)),
    "p_alive": st.one_of(st.none(), st.sampled_from(PROBS)),
    "churn_risk": st.sampled_from([None, "low", "medium", "high"]),
    "predicted_spend_tier": st.sampled_from([None, "low", "medium", "high"]),
    "expected_next_order_at": st.one_of(st.none(), moments),
    "orders_count": st.integers(0, 3),
}), min_size=4, max_size=12)

_NUM = st.sampled_from(["eq", "gt", "gte", "lt", "lte"])
leaf = st.sampled_from([
    st.builds(lambda op, v: {"predicted_clv": {op: v}}, _NUM, st.sampled_from(CLVS)),
    st.builds(lambda op, v: {"predicted_clv": {op: Decimal(str(v))}}, _NUM, st.sampled_from(CLVS)),
    st.builds(lambda op, v: {"p_alive": {op: v}}, _NUM, st.sampled_from(PROBS)),
    st.builds(lambda v: {"churn_risk": v}, st.sampled_from(["low", "medium", "high"])),
    st.builds(lambda v: {"churn_risk": {"in": v}},
              st.lists(st.sampled_from(["low", "medium", "high"]), min_size=1, max_size=2, unique=True)),
    st.builds(lambda v: {"predicted_spend_tier": {"eq": v}}, st.sampled_from(["high", "medium", "low"])),
    st.builds(lambda op, d: {"expected_next_order_at": {op: d}},
              st.sampled_from(["within_next_days", "overdue_by_days"]), DAYS),
    st.builds(lambda v: {"orders_count": {"gte": v}}, st.integers(0, 3)),
]).flatmap(lambda s: s)

conditions = st.recursive(leaf, lambda inner: st.one_of(
    st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda x: {"not": x}, inner),
), max_leaves=5)


def _load(conn, people: list[dict]) -> list[int]:
    conn.execute(sa.delete(TrackingEvent.__table__))
    conn.execute(sa.delete(CustomerTag.__table__))
    with_events = sa.select(ConsentEvent.__table__.c.customer_id).where(
        ConsentEvent.__table__.c.customer_id.is_not(None))
    conn.execute(sa.delete(Customer.__table__).where(Customer.__table__.c.id.not_in(with_events)))
    first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(Customer.__table__.c.id), 0))).scalar_one() + 1
    ids = []
    for i, p in enumerate(people, start=first):
        conn.execute(sa.insert(Customer.__table__).values(
            id=i, email=f"c{i}@example.com", email_hash=f"{i:064d}", total_spent=0, created_at=NOW, updated_at=NOW,
            attributes={}, **p))
        ids.append(i)
    return ids


@given(people=people_st, cond=conditions)
@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
def test_sql_and_python_agree_on_prediction_fields(db_url, people, cond):
    # Given random customers with prediction figures (some not scored: NULL)
    with db.get_engine(db_url).begin() as conn:
        ids = _load(conn, people)
        # When a random condition on the prediction fields is compiled and run in each shape
        results = {}
        for unindexed in (False, True):
            for bulk in (False, True):
                clause = segments.compile_condition(cond, now=NOW, unindexed=unindexed, bulk=bulk)
                results[unindexed, bulk] = set(conn.execute(sa.select(Customer.__table__.c.id).where(clause))
                                               .scalars())
    # Then each shape selects exactly the customers the plain-Python evaluation selects
    in_python = {i for i, p in zip(ids, people) if segments.evaluate(cond, p, now=NOW)}
    for shape, in_sql in results.items():
        assert in_sql == in_python, (shape, cond, segments.describe(segments.validate_condition(cond)))


def test_unscored_customers_match_no_prediction_condition_but_match_its_negation():
    # Given a customer the model could not score
    person = {"predicted_clv": None, "p_alive": None, "churn_risk": None, "expected_next_order_at": None}
    # Then no prediction condition holds for them, and "not" of one does
    for cond in ({"predicted_clv": {"gte": 0}}, {"p_alive": {"lte": 1}}, {"churn_risk": {"in": ["low", "high"]}},
                 {"expected_next_order_at": {"within_next_days": 36000}}):
        assert not segments.evaluate(cond, person, now=NOW)
        assert segments.evaluate({"not": cond}, person, now=NOW)


@pytest.mark.parametrize("cond, problem", [
    ({"p_alive": {"gt": 1.5}}, "probability from 0 to 1"),
    ({"churn_risk": "very high"}, "not one of low, medium, high"),
    ({"expected_next_order_at": {"within_days": 3}}, "unknown operator"),
    ({"predicted_clv": {"gt": "lots"}}, "must be a number"),
])
def test_bad_prediction_conditions_are_refused_naming_the_key(cond, problem):
    with pytest.raises(SegmentError, match=problem):
        segments.validate_condition(cond)


def test_a_winback_segment_reads_in_words():
    # Given "high predicted value, rising churn risk"
    tree = segments.validate_condition({"all": [{"predicted_spend_tier": "high"},
                                                {"churn_risk": {"in": ["medium", "high"]}}]})
    assert segments.describe(tree) == "all of (predicted_spend_tier = high; churn_risk in medium, high)"


@pytest.mark.parametrize("cond, index", [
    ({"predicted_clv": {"gte": 100}}, "ix_customers_predicted_clv"),
    ({"p_alive": {"lt": 0.3}}, "ix_customers_p_alive"),
    ({"churn_risk": "high"}, "ix_customers_churn_risk"),
    ({"expected_next_order_at": {"within_next_days": 7}}, "ix_customers_expected_next_order_at"),
    ({"predicted_spend_tier": {"eq": "high"}}, "ix_customers_predicted_spend_tier"),
])
def test_each_prediction_field_is_found_through_its_index(tmp_path, cond, index):
    # Given a migrated SQLite database (its planner shows the index choice on an empty table too)
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    db.upgrade(url)
    with db.get_engine(url).connect() as conn:
        # When a segment condition on the field is compiled in its indexed shape
        query = sa.select(Customer.__table__.c.id).where(segments.compile_condition(cond, now=NOW))
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(r[-1]) for r in conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql)))
    # Then SQLite searches the field's index, not the whole table
    assert index in plan, plan
    db.dispose_engines()
