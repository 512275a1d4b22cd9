"""Prediction figures of customers: fitting on the orders table, scoring every customer, explaining one.

Owns the database side of :mod:`mailer.predictions` (which stays database-free): the
orders up to an as-of day go through ``build_summary`` and ``scores.fit`` (:func:`fit`,
every attempt recorded in ``prediction_fits``), the figures are written to the
customers' columns in bulk (:func:`score_customers`), :func:`explain` puts one
customer's figures in words (:func:`explain_reasons`: the same as texts and values to translate), and :func:`daily_refit_hook` is the worker's once-a-day
refit (a sweeper hook).

The models (:mod:`mailer.predictions`, on SciPy) are imported by the functions that fit,
score, evaluate or explain, not with this module: every worker process imports this one
for its sweeper hook, and SciPy with NumPy is ~60 MB of RSS a worker that only sends
mail, or only checks that the day's refit is claimed, must not carry (docs/benchmarks.md,
"Worker memory").

Scores are never invented: a customer the model cannot score (no order with a known
total, or a first order younger than the minimum age) gets NULL figures and keeps an
imported ``predicted_spend_tier``; a shop below the minimum history gets
:class:`NotEnoughOrderHistory` naming every unmet requirement, and nothing is written.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailer.addresses import normalize
from mailer.clock import utcnow
from mailer.customers.orders import customer_orders, order_arrays
from mailer.db import session_scope
from mailer.errors import ConfigurationError, NotFound, ValidationError
from mailer.models import Customer, Order, OrderStatus, PredictionFit, UTCDateTime
from mailer.predictions.summary import DAYS_PER_WEEK, RFMSummary, build_summary
from mailer.settings import Settings

if TYPE_CHECKING:
    from mailer.predictions import bgnbd, scores
    from mailer.predictions import evaluate as holdout

log = logging.getLogger("mailer.predictions")

#: Earliest as-of day accepted (before any plausible order).
MIN_AS_OF = dt.date(1970, 1, 2)


def _models():
    """The models' modules ``(bgnbd, scores, evaluate)``, imported on first use."""
    # SciPy with NumPy: ~60 MB of RSS that a worker only needs when it fits (module docstring).
    from mailer.predictions import bgnbd, evaluate, scores
    return bgnbd, scores, evaluate


class NotEnoughOrderHistory(ValidationError):
    """The orders do not meet the models' minimum history; ``reasons`` lists what is missing."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("not enough order history to fit the prediction models: " + "; ".join(self.reasons),
                         field="orders")


def score_config(settings: Settings) -> scores.ScoreConfig:
    """The settings as a :class:`~mailer.predictions.scores.ScoreConfig`, or ConfigurationError naming the variable."""
    _, scores, _ = _models()

    rate = settings.clv_discount_rate
    if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ConfigurationError(f"MAILER_CLV_DISCOUNT_RATE must be a monthly rate from 0 to below 1 "
                                 f"(0.01 = 1% a month), got {rate!r}")
    parts = [p.strip() for p in str(settings.spend_tier_quantiles).split(",")]
    try:
        q1, q2 = (float(p) for p in parts)
    except ValueError:
        raise ConfigurationError(f"MAILER_SPEND_TIER_QUANTILES must be two quantiles 'q1,q2' such as 0.5,0.8, "
                                 f"got {settings.spend_tier_quantiles!r}") from None
    if not 0 < q1 <= q2 < 1:
        raise ConfigurationError(f"MAILER_SPEND_TIER_QUANTILES must satisfy 0 < q1 <= q2 < 1, got "
                                 f"{settings.spend_tier_quantiles!r}")
    return scores.ScoreConfig(spend_tier_quantiles=(q1, q2), clv_discount_rate_monthly=float(rate))


@dataclass(frozen=True)
class FitOutcome:
    summary: RFMSummary
    models: scores.FittedModels
    without_total: int  # placed orders left out (no total / no rate)
    fit_id: int


def _check_as_of(as_of: dt.date | None) -> dt.date:
    as_of = as_of or utcnow().date()
    if not MIN_AS_OF <= as_of <= dt.date(9998, 12, 31):
        raise ValidationError(f"as-of day {as_of} is out of range", field="as_of")
    return as_of


def _record(session: Session, *, as_of: dt.date, trigger: str, status: str, models=None, detail=None,
            scored=None, fit_id: int | None = None) -> int:
    values = {"fitted_at": utcnow(), "as_of": as_of, "trigger": trigger, "status": status, "detail": detail,
              "scored": scored}
    if models is not None:
        values |= {"customers": models.customers, "log_likelihood": float(models.bgnbd.log_likelihood),
                   "params": models.to_dict()}
    t = PredictionFit.__table__
    if fit_id is not None:
        session.execute(update(t).where(t.c.id == fit_id).values(**values))
        return fit_id
    return session.execute(insert(t).values(**values).returning(t.c.id)).scalar_one()


def _summary(session: Session, as_of: dt.date) -> tuple[RFMSummary, int]:
    orders = order_arrays(session, as_of)
    return build_summary(orders.customer_ids, orders.days, orders.amounts, as_of), orders.without_total


def fit(session: Session, settings: Settings, *, as_of: dt.date | None = None, trigger: str = "cli",
        fit_id: int | None = None) -> FitOutcome:
    """Fit both models on the placed orders up to ``as_of`` (default today, UTC) and record the fit.

    ``T`` is measured to the end of ``as_of``, as the paper does.  Too little history is
    :class:`NotEnoughOrderHistory` (the caller's transaction rolls back; :func:`run`
    records the refused attempt in a transaction of its own).
    """
    _, scores, _ = _models()

    as_of = _check_as_of(as_of)
    summary, without_total = _summary(session, as_of)
    try:
        models = scores.fit(summary)
    except scores.NotEnoughHistory as exc:
        raise NotEnoughOrderHistory(exc.reasons) from None
    fit_id = _record(session, as_of=as_of, trigger=trigger, status="fitted", models=models, fit_id=fit_id,
                     detail=f"{without_total} placed order(s) left out: no total in the shop's currency"
                     if without_total else None)
    return FitOutcome(summary, models, without_total, fit_id)


@dataclass(frozen=True)
class ScoreOutcome:
    fit: FitOutcome
    scored: int
    not_scored: int  # customers with orders the model cannot score (figures NULL)


#: Customers copied into the scores' temporary table per round (bounds the Python objects held).
SCORE_BATCH_ROWS = 50_000
#: SQLite page cache while the figures are written, KiB (the default is 2,000 KiB).
SQLITE_WRITE_CACHE_KIB = 65_536
#: The temporary table the figures go through: one row per scored customer, codes not labels.
SCORES_TABLE = "prediction_scores_tmp"
#: ``next_day`` of a customer without an expected next order (NULL in customers).
_NO_DAY = -(2**31)
_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_PG_TRAILER = b"\xff\xff"
#: A scores row as PostgreSQL's binary COPY reads it: 8 fields, (length, value) each, big-endian.
_PG_SCORE_ROW = np.dtype([("fields", ">i2"), ("l_id", ">i4"), ("id", ">i8"), ("l_p", ">i4"), ("p_alive", ">f8"),
                          ("l_90", ">i4"), ("o90", ">f8"), ("l_365", ">i4"), ("o365", ">f8"), ("l_clv", ">i4"),
                          ("clv", ">f8"), ("l_day", ">i4"), ("next_day", ">i4"), ("l_risk", ">i4"),
                          ("risk", ">i2"), ("l_tier", ">i4"), ("tier", ">i2")])


def _label_case(column: str, labels: tuple[str, ...]) -> str:
    return "CASE " + column + "".join(f" WHEN {i} THEN '{label}'" for i, label in enumerate(labels)) + " END"


def _scored_columns(result: scores.Scores) -> dict[str, np.ndarray]:
    """The scored customers' figures as plain columns (NaN / _NO_DAY / -1 where a figure is missing)."""
    keep = result.scored
    next_day = result.expected_next_order_at[keep]
    return {
        "id": result.customer_ids[keep].astype(np.int64),
        "p_alive": result.p_alive[keep], "o90": result.expected_orders_90d[keep],
        "o365": result.expected_orders_365d[keep], "clv": result.predicted_clv[keep],
        "next_day": np.where(np.isnat(next_day), _NO_DAY, next_day.astype(np.int64)).astype(np.int64),
        "risk": result.churn_risk_code[keep].astype(np.int64), "tier": result.spend_tier_code[keep].astype(np.int64),
    }


def _fill_sqlite(dbapi, cols: dict[str, np.ndarray]) -> None:
    cur = dbapi.cursor()
    try:
        cur.execute(f"DROP TABLE IF EXISTS temp.{SCORES_TABLE}")
        cur.execute(f"CREATE TEMP TABLE {SCORES_TABLE} (id INTEGER PRIMARY KEY, p_alive REAL, o90 REAL, o365 REAL, "
                    "clv REAL, next_day INTEGER, risk INTEGER, tier INTEGER)")
        names = list(cols)
        for i in range(0, cols["id"].shape[0], SCORE_BATCH_ROWS):
            # SQLite stores a NaN double as NULL: missing figures need no conversion.
            chunk = [cols[n][i:i + SCORE_BATCH_ROWS].tolist() for n in names]
            cur.executemany(f"INSERT INTO {SCORES_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # nosec B608 - a constant name
                            zip(*chunk, strict=True))
    finally:
        cur.close()


def _fill_postgresql(dbapi, cols: dict[str, np.ndarray]) -> None:
    with dbapi.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {SCORES_TABLE}")
        cur.execute(f"CREATE TEMP TABLE {SCORES_TABLE} (id int8 PRIMARY KEY, p_alive float8, o90 float8, o365 float8, "
                    "clv float8, next_day int4, risk int2, tier int2) ON COMMIT DROP")
        with cur.copy(f"COPY {SCORES_TABLE} FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_PG_SIGNATURE)
            for i in range(0, cols["id"].shape[0], SCORE_BATCH_ROWS):
                part = slice(i, i + SCORE_BATCH_ROWS)
                rows = np.empty(cols["id"][part].shape[0], dtype=_PG_SCORE_ROW)
                rows["fields"] = 8
                for length, name, width in (("l_id", "id", 8), ("l_p", "p_alive", 8), ("l_90", "o90", 8),
                                            ("l_365", "o365", 8), ("l_clv", "clv", 8), ("l_day", "next_day", 4),
                                            ("l_risk", "risk", 2), ("l_tier", "tier", 2)):
                    rows[length] = width
                    rows[name] = cols[name][part]
                copy.write(rows.tobytes())
            copy.write(_PG_TRAILER)
        # Row count and value spread for the planner: the UPDATE below joins on it.
        cur.execute(f"ANALYZE {SCORES_TABLE}")


def _write_scores(session: Session, result: scores.Scores, now: dt.datetime) -> int:
    """Every scored customer's figures in one ``UPDATE ... FROM`` a temporary table; the rest cleared."""
    cols = _scored_columns(result)
    conn = session.connection()
    dbapi = conn.connection.dbapi_connection
    pg = conn.dialect.name == "postgresql"
    if not pg:
        # A larger page cache for the write: the UPDATE touches every prediction index of
        # customers in id order, so each index's pages are visited at random (restored below).
        cache_pages = dbapi.execute("PRAGMA cache_size").fetchone()[0]
        dbapi.execute(f"PRAGMA cache_size = -{SQLITE_WRITE_CACHE_KIB}")
    try:
        return _update_from_scores(conn, dbapi, cols, now, pg=pg)
    finally:
        if not pg:
            dbapi.execute(f"PRAGMA cache_size = {int(cache_pages)}")


def _update_from_scores(conn, dbapi, cols: dict[str, np.ndarray], now: dt.datetime, *, pg: bool) -> int:
    (_fill_postgresql if pg else _fill_sqlite)(dbapi, cols)
    _, scores, _ = _models()

    scored = int(cols["id"].shape[0])
    stamp = bindparam("now", now, type_=UTCDateTime())
    if pg:
        def num(col):
            return f"NULLIF(s.{col}, 'NaN'::float8)"
        next_at = f"(DATE '1970-01-01' + NULLIF(s.next_day, {_NO_DAY}))::timestamp AT TIME ZONE 'UTC'"
    else:
        def num(col):
            return f"s.{col}"
        # The text UTCDateTime stores on SQLite: 'YYYY-MM-DD HH:MM:SS.ffffff', naive UTC.
        next_at = f"date(NULLIF(s.next_day, {_NO_DAY}) * 86400, 'unixepoch') || ' 00:00:00.000000'"
    # The figures: one statement joining the temporary table to customers on the primary key
    # (a hash join on PostgreSQL, rowid lookups on SQLite). The computed tier replaces the
    # imported one only here, for the scored customers.
    conn.execute(text(
        # Every interpolated piece is a constant of this module (column names, label CASEs), never input.
        f"UPDATE customers SET p_alive = {num('p_alive')}, expected_orders_90d = {num('o90')}, "  # nosec B608
        f"expected_orders_365d = {num('o365')}, predicted_clv = {num('clv')}, expected_next_order_at = {next_at}, "
        f"churn_risk = {_label_case('s.risk', scores.CHURN_RISK_LABELS)}, "
        f"predicted_spend_tier = {_label_case('s.tier', scores.SPEND_TIER_LABELS)}, "
        f"predictions_at = :now, updated_at = :now FROM {SCORES_TABLE} AS s WHERE customers.id = s.id")
        .bindparams(stamp))
    # Customers scored before but not now (no longer scorable) get NULLs, not stale numbers:
    # the only rows with figures from another run. A filter, not an anti-join with the
    # temporary table (on PostgreSQL the statistics of predictions_at can be stale right after
    # a bulk load, and a misestimated anti-join goes quadratic).
    conn.execute(text(
        "UPDATE customers SET p_alive = NULL, expected_orders_90d = NULL, expected_orders_365d = NULL, "
        "predicted_clv = NULL, expected_next_order_at = NULL, churn_risk = NULL, predictions_at = NULL, "
        "updated_at = :now WHERE predictions_at IS NOT NULL AND predictions_at <> :now").bindparams(stamp))
    if pg:
        # Fresh statistics for the columns just rewritten (a sample of the table, inside this
        # transaction, so it sees the new figures): with the old ones, the planner takes
        # expected_next_order_at or churn_risk for almost all NULL and walks their whole
        # index per id range in the triggers' pass and in segments.
        conn.exec_driver_sql("ANALYZE customers")
    else:
        conn.exec_driver_sql(f"DROP TABLE temp.{SCORES_TABLE}")
    return scored


def score_customers(session: Session, settings: Settings, *, as_of: dt.date | None = None, trigger: str = "cli",
                    fit_id: int | None = None) -> ScoreOutcome:
    """Fit, then write every customer's figures in bulk (see :func:`_write_scores`).

    Every earlier figure of a customer not scored now is cleared, so a customer who can
    no longer be scored has NULLs, not stale numbers; the computed ``predicted_spend_tier``
    replaces the imported one only where the model scored the customer.
    """
    _, scores, _ = _models()

    config = score_config(settings)
    outcome = fit(session, settings, as_of=as_of, trigger=trigger, fit_id=fit_id)
    result = scores.score(outcome.summary, outcome.models, config)
    scored = _write_scores(session, result, utcnow())
    del result
    _record(session, as_of=outcome.models.as_of, trigger=trigger, status="fitted", models=outcome.models,
            scored=scored, fit_id=outcome.fit_id, detail=None)
    return ScoreOutcome(outcome, scored, len(outcome.summary) - scored)


def latest_fit(session: Session) -> PredictionFit | None:
    """The newest successful fit (ix_prediction_fits_fitted_at, walked backwards)."""
    return session.execute(select(PredictionFit).where(PredictionFit.status == "fitted")
                           .order_by(PredictionFit.fitted_at.desc(), PredictionFit.id.desc()).limit(1)).scalar_one_or_none()


def run(settings: Settings, *, as_of: dt.date | None = None, trigger: str = "cli", score: bool = False,
        fit_id: int | None = None) -> FitOutcome | ScoreOutcome:
    """Fit (and with ``score`` write the figures) in one transaction; a refused or failed
    attempt is still recorded in ``prediction_fits``, in a transaction of its own."""
    as_of = _check_as_of(as_of)
    try:
        with session_scope(settings) as s:
            if score:
                return score_customers(s, settings, as_of=as_of, trigger=trigger, fit_id=fit_id)
            return fit(s, settings, as_of=as_of, trigger=trigger, fit_id=fit_id)
    except NotEnoughOrderHistory as exc:
        with session_scope(settings) as s:
            _record(s, as_of=as_of, trigger=trigger, status="not_enough_history", detail=str(exc), fit_id=fit_id)
        raise
    except Exception as exc:
        with session_scope(settings) as s:
            _record(s, as_of=as_of, trigger=trigger, status="failed", fit_id=fit_id,
                    detail=f"{type(exc).__name__}: {exc}"[:2000])
        raise


# -- hold-out evaluation ---------------------------------------------------------------------------
def evaluate(session: Session, settings: Settings, *, calibration_end: dt.date,
             holdout_end: dt.date | None = None) -> holdout.Evaluation:
    """``mailer predict evaluate``: fit on the placed orders up to ``calibration_end``, compare
    with the orders after it up to ``holdout_end`` (default: the day of the last placed order).

    Writes nothing: the customers' figures and ``prediction_fits`` are left as they are.
    """
    _, scores, holdout = _models()

    calibration_end = _check_as_of(calibration_end)
    if holdout_end is None:
        o = Order.__table__
        # The newest placed order (ix_orders_placed_at, read from its end).
        last = session.execute(select(func.max(o.c.placed_at))
                               .where(o.c.status == OrderStatus.placed.value)).scalar_one()
        holdout_end = last.date() if last is not None else calibration_end
    holdout_end = _check_as_of(holdout_end)
    if holdout_end <= calibration_end:
        raise ValidationError(f"the hold-out period is empty: no placed order after the calibration end "
                              f"{calibration_end} (hold-out end {holdout_end}); choose an earlier "
                              "--calibration-end or a later --holdout-end", field="calibration_end")
    orders = order_arrays(session, holdout_end)
    try:
        return holdout.evaluate(orders.customer_ids, orders.days, orders.amounts, calibration_end=calibration_end,
                                holdout_end=holdout_end)
    except scores.NotEnoughHistory as exc:
        raise NotEnoughOrderHistory(exc.reasons) from None


# -- in words ------------------------------------------------------------------------------------
def _params(fit_row: PredictionFit) -> tuple[bgnbd.BGNBDParams | tuple, dict]:
    p = fit_row.params["bgnbd"]
    return (p["r"], p["alpha"], p["a"], p["b"]), fit_row.params["gamma_gamma"]


@dataclass(frozen=True)
class Reason:
    """One line of :func:`explain_reasons`: an English text with ``{name}`` places and their values.

    The values are already formatted (percentages, two decimals, dates), so a translation only
    moves them around; ``str(reason)`` is the English line ``mailer predict show`` prints.
    """

    text: str
    values: dict[str, str]

    def __str__(self) -> str:
        return self.text.format(**self.values)


#: Every text a :class:`Reason` can carry, in the order they appear: the console's catalogs
#: translate each (mailer/web/console/i18n/predictions.toml; tests/test_console_i18n.py checks).
REASON_TEXTS = (
    "{email}: {placed} placed order(s)",
    "{email}: {placed} placed order(s), {left_out} cancelled or refunded (left out)",
    "No prediction fit yet: run `mailer predict score` (or wait for the worker's daily refit).",
    "Figures from the fit of {fitted_at} UTC on orders up to {as_of} ({customers} customers).",
    "Not scored: no placed order with a total in the shop's currency up to the as-of day, "
    "so the model has nothing to go on (no figures are invented).",
    "History: first order {first}, last {last}; {repeats} repeat purchase day(s) after the first; "
    "customer for {weeks} weeks, last seen {quiet} weeks before the as-of day.",
    "Not scored: the first order is less than {min_age} days before the as-of day "
    "(too new to predict; no figures are invented).",
    "predicted_spend_tier {tier} is the imported value.",
    "p_alive {p_alive}: with no repeat purchase yet, BG/NBD cannot tell a customer who left (leaving happens "
    "only right after a purchase), so this is high; the expected orders say more.",
    "p_alive {p_alive}: the chance they are still a customer, given {repeats} repeat purchase(s) and "
    "{quiet} quiet weeks (a long silence after frequent buying lowers it).",
    "Expected orders: {orders_90d} in the next 90 days, {orders_365d} in the next 365 (population purchase "
    "rate r/alpha = {rate} a week, updated by their own history).",
    "churn_risk {risk}: P(no order in the next 90 days) = {no_order} (low below 33%, high above 66%).",
    "predicted_clv {clv} {currency}: expected orders over 12 months times the expected spend per order, "
    "discounted at {discount} a month.",
    "predicted_spend_tier {tier}: by the {quantiles} quantiles of predicted_clv over all scored customers.",
    "expected_next_order_at {day}: the median wait for the next order if they are still a customer.",
)


def explain(session: Session, settings: Settings, address: str) -> list[str]:
    """One customer's figures in words: their history, what the model makes of it, and why (English)."""
    return [str(r) for r in explain_reasons(session, settings, address)]


def explain_reasons(session: Session, settings: Settings, address: str) -> list[Reason]:
    """:func:`explain` as :class:`Reason` lines, for a caller that translates them (the console)."""
    bgnbd, scores, _ = _models()

    email = normalize(address)
    customer = session.execute(select(Customer).where(Customer.email == email)).scalar_one_or_none()
    if customer is None:
        raise NotFound(f"no customer with address {email}")
    orders = customer_orders(session, customer.id)
    placed = [o for o in orders if o.status.value == "placed"]
    lines: list[Reason] = []

    def say(text: str, **values: object) -> None:
        lines.append(Reason(text, {k: str(v) for k, v in values.items()}))

    if len(orders) > len(placed):
        say(REASON_TEXTS[1], email=email, placed=len(placed), left_out=len(orders) - len(placed))
    else:
        say(REASON_TEXTS[0], email=email, placed=len(placed))
    fit_row = latest_fit(session)
    if fit_row is None:
        say(REASON_TEXTS[2])
        return lines
    as_of = fit_row.as_of
    say(REASON_TEXTS[3], fitted_at=f"{fit_row.fitted_at:%Y-%m-%d %H:%M}", as_of=as_of, customers=fit_row.customers)
    days = sorted({o.placed_at.date() for o in placed if o.total_shop is not None and o.placed_at.date() <= as_of})
    if not days:
        say(REASON_TEXTS[4])
        return lines
    x = len(days) - 1
    t_x = (days[-1] - days[0]).days / DAYS_PER_WEEK
    T = (as_of - days[0]).days / DAYS_PER_WEEK
    say(REASON_TEXTS[5], first=days[0], last=days[-1], repeats=x, weeks=f"{T:.1f}", quiet=f"{T - t_x:.1f}")
    if customer.p_alive is None:
        say(REASON_TEXTS[6], min_age=scores.HistoryRule().min_customer_age_days)
        if customer.predicted_spend_tier is not None:
            say(REASON_TEXTS[7], tier=customer.predicted_spend_tier.value)
        return lines
    params, _ = _params(fit_row)
    r, alpha, a, b = params
    if x == 0:
        say(REASON_TEXTS[8], p_alive=f"{customer.p_alive:.0%}")
    else:
        say(REASON_TEXTS[9], p_alive=f"{customer.p_alive:.0%}", repeats=x, quiet=f"{T - t_x:.1f}")
    say(REASON_TEXTS[10], orders_90d=f"{customer.expected_orders_90d:.2f}",
        orders_365d=f"{customer.expected_orders_365d:.2f}", rate=f"{r / alpha:.3f}")
    no_order = bgnbd.prob_no_transaction(params, 90 / DAYS_PER_WEEK, x, t_x, T)
    say(REASON_TEXTS[11], risk=customer.churn_risk.value if customer.churn_risk else "unknown",
        no_order=f"{float(no_order):.0%}")
    if customer.predicted_clv is not None:
        say(REASON_TEXTS[12], clv=f"{customer.predicted_clv:.2f}", currency=settings.default_currency,
            discount=f"{settings.clv_discount_rate:.1%}")
    say(REASON_TEXTS[13], tier=customer.predicted_spend_tier.value if customer.predicted_spend_tier else "none",
        quantiles=settings.spend_tier_quantiles)
    if customer.expected_next_order_at is not None:
        say(REASON_TEXTS[14], day=f"{customer.expected_next_order_at:%Y-%m-%d}")
    return lines


# -- the daily refit -------------------------------------------------------------------------------
def daily_refit_hook(app) -> ScoreOutcome | None:
    """Sweeper hook: refit and rescore once a day (the first worker to claim the day does it).

    The claim is a ``prediction_fits`` row with the day's unique ``daily_key``, so two
    workers never refit the same day; too little history is recorded and retried the
    next day, not every sweep.  Returns the score when this call made it, else None.
    """
    settings = app.settings
    if not settings.predictions_daily_refit:
        return None
    today = utcnow().date()
    with app.session() as s:
        t = PredictionFit.__table__
        if s.execute(select(t.c.id).where(t.c.daily_key == today)).first() is not None:
            return None
        ins = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        claimed = s.execute(ins(t).values(fitted_at=utcnow(), as_of=today, trigger="daily", daily_key=today,
                                          status="running")
                            .on_conflict_do_nothing(index_elements=["daily_key"]).returning(t.c.id)).scalar()
    if claimed is None:
        return None
    try:
        outcome = run(settings, as_of=today, trigger="daily", score=True, fit_id=claimed)
    except NotEnoughOrderHistory as exc:
        log.info("daily prediction refit skipped: %s", exc)
        return None
    log.info("daily prediction refit: %d customers scored, %d not scored", outcome.scored, outcome.not_scored)
    return outcome
