"""Prediction triggers: ``churn_risk_became`` and ``expected_order_due`` raised from the scored figures.

After every score (``mailer predict score``, the worker's daily refit) :func:`raise_prediction_events`
compares each customer's figures in ``customers`` with what the triggers last saw
(``prediction_triggers``) and publishes mailer's own events through
:func:`mailer.automations.publish.publish`, so the rules in ``automations/*.toml`` that
trigger on them get consent, suppressions, quiet hours, frequency caps and reward codes
exactly like every other marketing rule.

* ``churn_risk_became``: the customer's ``churn_risk`` differs from the one the last
  processed score gave (low → high, medium → high, high → medium, ...). A customer's first
  scored risk is their starting point, not a crossing: switching predictions on does not
  mail every customer already at high risk (a campaign on the segment does that).
* ``expected_order_due``: a purchase cycle starts at the customer's last placed order; its
  expected next order is frozen at the cycle's first score (later scores push
  ``expected_next_order_at`` further out while the customer stays quiet, so a moving date
  would never come due). The event is raised once per cycle, on the first score whose
  as-of day is at most the rules' longest ``before`` ahead of that date; the rule
  schedules its mail ``before`` ahead of it (at once when that is past). A new order
  starts a new cycle (``cancelled_by = ["order_placed"]`` drops a pending reminder).

Once per crossing, safe to rerun: a rerun sees the figures equal to what the triggers
saw and raises nothing; each event's ``Idempotency-Key`` names the customer and the
crossing (``prediction:churn_risk_became:<customer>:<crossing number>``,
``prediction:expected_order_due:<customer>:<cycle day>``), so a run that died between
publishing and recording publishes nothing twice. Events are raised only while an
enabled rule listens to them; without one the triggers still track the figures, so a
rule switched on later does not fire for old crossings.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import Integer, String, and_, exists, func, insert, literal, null, select, update

from mailer.automations.publish import publish
from mailer.automations.rules import load
from mailer.clock import utcnow
from mailer.errors import ValidationError
from mailer.models import Customer, Order, OrderStatus, PredictionTrigger, UTCDateTime

log = logging.getLogger("mailer.predictions")

CHURN = "churn_risk_became"
DUE = "expected_order_due"
#: State rows written per executemany round.
BATCH_ROWS = 5000
#: Customers (a range of ids) compared per round, so a pass holds at most this many rows.
CHUNK_IDS = 50_000


@dataclass
class TriggerRun:
    """What one pass raised: crossings published, starting points recorded, events' actions."""

    as_of: dt.date
    churn_crossings: int = 0
    churn_started: int = 0
    due_raised: int = 0
    cycles_started: int = 0
    actions: list = field(default_factory=list)

    def summary(self) -> str:
        return (f"churn_risk_became: {self.churn_crossings} crossing(s) ({self.churn_started} customer(s) "
                f"scored for the first time); expected_order_due: {self.due_raised} raised "
                f"({self.cycles_started} new purchase cycle(s))")


def _end_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _publish(app, type_: str, data: dict, key: str, run: TriggerRun, now: dt.datetime | None) -> None:
    try:
        result = publish(type_, data, idempotency_key=key, app=app, internal=True, now=now)
    except ValidationError as exc:
        if exc.field != "idempotency_key":
            raise
        # The key exists for other figures (a rerun on another day after a crash) or is being
        # applied by another worker right now: that crossing is raised already.
        log.info("prediction event %s already raised: %s", key, exc)
        return
    run.actions.extend(result.actions)


def raise_prediction_events(app, *, as_of: dt.date, now: dt.datetime | None = None) -> TriggerRun:
    """Compare the scored figures with the triggers' state; publish every new crossing once.

    ``now`` (aware UTC) stands in for the clock of the published events (delays, quiet
    hours), as in :func:`~mailer.automations.publish.publish`.
    """
    rules = [r for r in load(app.settings) if r.enabled]
    churn_rules = any(r.event == CHURN for r in rules)
    lead = max((r.before or dt.timedelta(0) for r in rules if r.event == DUE), default=None)
    run = TriggerRun(as_of)
    with app.session() as s:
        low, high = s.execute(select(func.min(Customer.id), func.max(Customer.id))).one()
    if low is None:
        return run
    for start in range(low, high + 1, CHUNK_IDS):
        ids = (start, start + CHUNK_IDS)
        _churn(app, run, as_of, ids, publish_events=churn_rules, now=now)
        _due(app, run, as_of, ids, lead=lead, now=now)
    log.info("prediction triggers as of %s: %s", as_of, run.summary())
    return run


def _churn(app, run: TriggerRun, as_of: dt.date, ids: tuple[int, int], *, publish_events: bool,
           now: dt.datetime | None) -> None:
    c, t = Customer.__table__, PredictionTrigger.__table__
    clock, now = now, utcnow()
    scored = and_(c.c.id >= ids[0], c.c.id < ids[1], c.c.churn_risk.is_not(None), c.c.erased_at.is_(None))
    on_row = and_(t.c.customer_id == c.c.id, t.c.trigger == CHURN)
    with app.session() as s:
        # Starting points, written by the database itself: the scored customers of this id range
        # (primary key range) without a trigger row (an anti-join on its (customer_id, trigger)
        # primary key) get their current risk, no crossing. No row travels through Python.
        started = s.execute(insert(t).from_select(
            ["customer_id", "trigger", "value", "changes", "updated_at"],
            select(c.c.id, literal(CHURN, String), c.c.churn_risk, literal(0, Integer), literal(now, UTCDateTime()))
            .where(scored, ~exists().where(on_row))).execution_options(preserve_rowcount=True))
        run.churn_started += max(started.rowcount or 0, 0)
        # Crossings: only the customers whose risk differs from their trigger row's (the inner
        # join on that primary key, filtered on the difference); normally a few per day.
        rows = s.execute(
            select(c.c.id, c.c.email, c.c.churn_risk, c.c.p_alive, c.c.predicted_clv, t.c.value, t.c.changes)
            .select_from(c.join(t, on_row)).where(scored, t.c.value != c.c.churn_risk)).all()
    for r in rows:
        new = _risk(r.churn_risk)
        if publish_events:
            data = {"email": r.email, "churn_risk": new, "previous_churn_risk": r.value, "as_of": as_of.isoformat()}
            if r.p_alive is not None:
                data["p_alive"] = float(r.p_alive)
            if r.predicted_clv is not None:
                data["predicted_clv"] = float(r.predicted_clv)
            _publish(app, CHURN, data, f"prediction:{CHURN}:{r.id}:{r.changes + 1}", run, clock)
        with app.session() as s:
            # Guarded by the crossing number read above: a concurrent worker that recorded it
            # first makes this a no-op.
            s.execute(update(t).where(t.c.customer_id == r.id, t.c.trigger == CHURN, t.c.changes == r.changes)
                      .values(value=new, changes=r.changes + 1, fired_at=now if publish_events else None,
                              updated_at=now))
        run.churn_crossings += 1


def _risk(value) -> str:
    return getattr(value, "value", value)


def _cycle_day(session, last_at):
    """SQL for the ISO day (UTC) of ``last_at``, the purchase cycle's name in ``prediction_triggers.value``."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", last_at), "YYYY-MM-DD")
    # SQLite keeps UTCDateTime as naive UTC text 'YYYY-MM-DD HH:MM:SS...': the day is its start.
    return func.substr(last_at, 1, 10)


def _due(app, run: TriggerRun, as_of: dt.date, ids: tuple[int, int], *, lead: dt.timedelta | None,
         now: dt.datetime | None) -> None:
    c, t, o = Customer.__table__, PredictionTrigger.__table__, Order.__table__
    clock, now = now, utcnow()
    end = _end_of(as_of)
    on_row = and_(t.c.customer_id == c.c.id, t.c.trigger == DUE)
    with app.session() as s:
        # The day of each customer's last placed order up to as-of, for one id range of
        # customers (uq_orders_customer_shop_order leads with customer_id, so the range and the
        # grouping walk that index), joined to the scored customers below.
        last_at = func.max(o.c.placed_at)
        last = (select(o.c.customer_id, _cycle_day(s, last_at).label("cycle"))
                .where(o.c.customer_id >= ids[0], o.c.customer_id < ids[1],
                       o.c.status == OrderStatus.placed.value, o.c.placed_at < end)
                .group_by(o.c.customer_id).subquery())
        in_scope = and_(c.c.id >= ids[0], c.c.id < ids[1], c.c.expected_next_order_at.is_not(None),
                        c.c.erased_at.is_(None))
        with_last = c.join(last, last.c.customer_id == c.c.id)
        # New purchase cycles of customers with no trigger row yet (an anti-join on its primary
        # key): written by the database itself, the expected date frozen at this score.
        started = s.execute(insert(t).from_select(
            ["customer_id", "trigger", "value", "changes", "due_at", "fired_at", "updated_at"],
            select(c.c.id, literal(DUE, String), last.c.cycle, literal(0, Integer), c.c.expected_next_order_at,
                   null(), literal(now, UTCDateTime()))
            .select_from(with_last).where(in_scope, ~exists().where(on_row))).execution_options(preserve_rowcount=True))
        run.cycles_started += max(started.rowcount or 0, 0)
        # Customers whose last order moved on since their row's cycle (an order since the last
        # score): normally a few a day, each a new cycle with its own expected date.
        restarted = s.execute(select(c.c.id, last.c.cycle, c.c.expected_next_order_at)
                              .select_from(with_last.join(t, on_row))
                              .where(in_scope, t.c.value != last.c.cycle)).all()
        for r in restarted:
            # A new purchase cycle: its own expected date, not raised yet (primary key lookup).
            s.execute(update(t).where(t.c.customer_id == r.id, t.c.trigger == DUE)
                      .values(value=r.cycle, due_at=r.expected_next_order_at, fired_at=None, updated_at=now))
        run.cycles_started += len(restarted)
        if lead is None:
            return
        # The cycles not raised yet whose expected date is at most `lead` after the end of the
        # as-of day: the same join, on the trigger row's frozen due_at.
        pending = s.execute(select(c.c.id, c.c.email, t.c.value, t.c.due_at)
                            .select_from(with_last.join(t, on_row))
                            .where(in_scope, t.c.value == last.c.cycle, t.c.fired_at.is_(None),
                                   t.c.due_at.is_not(None), t.c.due_at < end + lead)).all()
    for cid, email, cycle, due_at in pending:
        due_at = _aware(due_at)
        data = {"email": email, "expected_next_order_at": due_at.date().isoformat(), "last_order_at": cycle,
                "as_of": as_of.isoformat()}
        _publish(app, DUE, data, f"prediction:{DUE}:{cid}:{cycle}", run, clock)
        with app.session() as s:
            s.execute(update(t).where(t.c.customer_id == cid, t.c.trigger == DUE, t.c.value == cycle)
                      .values(fired_at=now, updated_at=now))
        run.due_raised += 1


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
