"""Campaign report figures kept as tracking events arrive (issue 20: the 200,000-recipient report).

The report (mailer/campaigns/reports.py) used to count every tracking event of the
campaign at request time: ``count(DISTINCT delivery_id)`` for unique opens and clicks,
the chart's buckets and the most-clicked links (5.4 s on SQLite at 1,000,000 events in
one campaign).  Three rollup tables now hold those counts, kept true by triggers on
``tracking_events`` so every write path (the tracking service, bounces and ESP webhooks,
bulk loaders, raw SQL in tests) maintains them; the report reads O(minutes + hours +
links) rows:

* ``campaign_tracking_totals (campaign_id, kind)``: ``events`` and ``uniques``.  A unique is
  a delivery (for unsubscribes: a customer, as the report always counted them) with at
  least one event of that kind in the campaign; NULL deliveries / customers are not
  counted, as ``count(DISTINCT ...)`` never counted them.
* ``campaign_tracking_buckets (campaign_id, kind, unit, bucket_start)``: ``events`` per UTC
  minute and per UTC hour (the chart draws minutes and 5 minutes from the first, hours and
  days from the second).
* ``campaign_link_counts (campaign_id, url_key)``: ``clicks`` and ``unique_clicks`` (distinct
  deliveries) per link; ``url_key`` is the URL's first ``URL_KEY_CHARS`` characters (a NULL
  URL counts under the empty one's key; ``url`` keeps it NULL, so it sorts as before), so a very long URL never exceeds PostgreSQL's B-tree entry
  size and fails a click.

Triggers fire on INSERT, DELETE (retention purge, tests) and UPDATE (GDPR erasure clears
IP and user agent; nothing moves an event, but if something did, the counts follow), each
applying old rows with sign -1 and new rows with sign +1.  "Unique" is decided by looking
at the other events of the same (campaign, kind, delivery): one probe of
``ix_tracking_campaign_kind_delivery`` (unsubscribes: ``ix_tracking_customer_kind``).

* **SQLite**: row triggers.  SQLite has one writer at a time, so the probe sees every event
  written before this one.
* **PostgreSQL**: statement triggers with transition tables (a COPY of 500,000 events is
  one set-based pass).  The first statement upserts ``campaign_tracking_totals``, which
  row-locks (campaign, kind) until commit; concurrent writers of the same campaign and
  kind therefore queue there, and the uniqueness count that follows (a new snapshot under
  READ COMMITTED) sees every event committed before it.  Without that order two requests
  for the same delivery at the same instant (a double click) would both count as first.

The upgrade creates the triggers first and then backfills from existing rows with one
``INSERT ... SELECT ... GROUP BY`` per table; on PostgreSQL CREATE TRIGGER locks
``tracking_events`` against writes until the migration commits, so no event is counted
twice or missed.

Revision ID: 0021
Revises: 0019
"""
import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0019'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_KIND = sa.Enum('open', 'machine_open', 'click', 'unsubscribe', 'complaint', 'bounce', name='trackingkind',
                native_enum=False, length=20)
#: Characters of a URL that identify a link in ``campaign_link_counts`` (600 characters are at
#: most 2,400 bytes in UTF-8, under PostgreSQL's 2,704-byte B-tree entry limit).
URL_KEY_CHARS = 600

# -- SQLite ------------------------------------------------------------------------------------------
#: Is this row (NEW or OLD, ``{r}``) the only event of its kind for its delivery (unsubscribes:
#: customer) in its campaign?  One probe of ix_tracking_campaign_kind_delivery (unsubscribes:
#: ix_tracking_customer_kind); ``t.id <> {r}.id`` leaves the row itself out (on UPDATE the row
#: now carries the new values, on DELETE it is already gone).
_SQLITE_ALONE = """CASE WHEN {r}.kind = 'unsubscribe' THEN
        {r}.customer_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM tracking_events t WHERE t.customer_id = {r}.customer_id AND t.kind = 'unsubscribe'
               AND t.campaign_id = {r}.campaign_id AND t.id <> {r}.id)
    ELSE {r}.delivery_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM tracking_events t WHERE t.campaign_id = {r}.campaign_id AND t.kind = {r}.kind
               AND t.delivery_id = {r}.delivery_id AND t.id <> {r}.id) END"""

#: Is this click the only one of its delivery on its link?  Same index, the link compared on
#: the key (the delivery's few clicks are read from the table).
_SQLITE_LINK_ALONE = """({r}.delivery_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM tracking_events t WHERE t.campaign_id = {r}.campaign_id AND t.kind = 'click'
               AND t.delivery_id = {r}.delivery_id AND t.id <> {r}.id
               AND substr(coalesce(t.url, ''), 1, {n}) = substr(coalesce({r}.url, ''), 1, {n})))"""

#: One row's contribution, ``{s}`` = 1 (NEW) or -1 (OLD).  Each statement is an upsert on the
#: rollup's primary key; the WHERE both skips events without a campaign and is what SQLite
#: needs before ON CONFLICT in an INSERT ... SELECT.
_SQLITE_APPLY = (
    """
    INSERT INTO campaign_tracking_totals (campaign_id, kind, events, uniques)
    SELECT {r}.campaign_id, {r}.kind, {s}, {s} * ("""  # nosec B608 - constant SQL (trigger text)
    + _SQLITE_ALONE
    + """)
     WHERE {r}.campaign_id IS NOT NULL
    ON CONFLICT (campaign_id, kind) DO UPDATE
       SET events = campaign_tracking_totals.events + excluded.events,
           uniques = campaign_tracking_totals.uniques + excluded.uniques;
    INSERT INTO campaign_tracking_buckets (campaign_id, kind, unit, bucket_start, events)
    SELECT {r}.campaign_id, {r}.kind, u.unit,
           strftime(CASE u.unit WHEN 'minute' THEN '%Y-%m-%d %H:%M:00' ELSE '%Y-%m-%d %H:00:00' END, {r}.occurred_at),
           {s}
      FROM (SELECT 'minute' AS unit UNION ALL SELECT 'hour') u
     WHERE {r}.campaign_id IS NOT NULL
    ON CONFLICT (campaign_id, kind, unit, bucket_start) DO UPDATE
       SET events = campaign_tracking_buckets.events + excluded.events;
    INSERT INTO campaign_link_counts (campaign_id, url_key, url, clicks, unique_clicks)
    SELECT {r}.campaign_id, substr(coalesce({r}.url, ''), 1, {n}), {r}.url, {s},
           {s} * """  # nosec B608 - constant SQL (trigger text)
    + _SQLITE_LINK_ALONE
    + """
     WHERE {r}.campaign_id IS NOT NULL AND {r}.kind = 'click'
    ON CONFLICT (campaign_id, url_key) DO UPDATE
       SET clicks = campaign_link_counts.clicks + excluded.clicks,
           unique_clicks = campaign_link_counts.unique_clicks + excluded.unique_clicks;
"""  # nosec B608 - constant SQL (trigger text)
)


def _sqlite_apply(r: str, s: int) -> str:
    return _SQLITE_APPLY.format(r=r, s=s, n=URL_KEY_CHARS)


SQLITE_UPGRADE = [
    f"""CREATE TRIGGER tracking_rollup_insert AFTER INSERT ON tracking_events
        WHEN NEW.campaign_id IS NOT NULL BEGIN {_sqlite_apply('NEW', 1)} END""",  # nosec B608 - constant SQL
    f"""CREATE TRIGGER tracking_rollup_delete AFTER DELETE ON tracking_events
        WHEN OLD.campaign_id IS NOT NULL BEGIN {_sqlite_apply('OLD', -1)} END""",  # nosec B608 - constant SQL
    # Only a change of a counted column moves counts (erasure's ip / user_agent does not fire this).
    f"""CREATE TRIGGER tracking_rollup_update
        AFTER UPDATE OF campaign_id, kind, delivery_id, customer_id, url, occurred_at ON tracking_events
        BEGIN {_sqlite_apply('OLD', -1)} {_sqlite_apply('NEW', 1)} END""",  # nosec B608 - constant SQL
]
SQLITE_DOWNGRADE = ["DROP TRIGGER IF EXISTS tracking_rollup_insert", "DROP TRIGGER IF EXISTS tracking_rollup_delete",
                    "DROP TRIGGER IF EXISTS tracking_rollup_update"]

# -- PostgreSQL --------------------------------------------------------------------------------------
#: The statement's rows with their sign, per trigger: new rows +1, old rows -1.
_PG_DELTA = {
    "insert": "SELECT campaign_id, kind, delivery_id, customer_id, url, occurred_at, 1 AS sign FROM new_events",
    "delete": "SELECT campaign_id, kind, delivery_id, customer_id, url, occurred_at, -1 AS sign FROM old_events",
    "update": "SELECT campaign_id, kind, delivery_id, customer_id, url, occurred_at, 1 AS sign FROM new_events "
              "UNION ALL SELECT campaign_id, kind, delivery_id, customer_id, url, occurred_at, -1 FROM old_events",
}

#: Per key of the statement (campaign, kind, delivery or customer; for links also the URL key):
#: ``after`` is how many events the table holds for it now (one index probe; the statement's
#: own rows included), so it had ``after - n_new + n_old`` before; the unique count changes by
#: (exists now) - (existed before).  This covers INSERT, DELETE and UPDATE alike.
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION tracking_rollup_{op}() RETURNS trigger AS $$
BEGIN
    -- 1. Events per (campaign, kind).  This upsert also row-locks each (campaign, kind) until
    --    commit, so the uniqueness count in step 3 runs after every concurrent writer of the
    --    same key has committed (see the module docstring).  ORDER BY: one lock order for all.
    INSERT INTO campaign_tracking_totals AS tt (campaign_id, kind, events, uniques)
    SELECT d.campaign_id, d.kind, sum(d.sign), 0
      FROM ({delta}) d
     WHERE d.campaign_id IS NOT NULL
     GROUP BY d.campaign_id, d.kind
     ORDER BY d.campaign_id, d.kind
    ON CONFLICT (campaign_id, kind) DO UPDATE SET events = tt.events + EXCLUDED.events;

    -- 2. Events per UTC minute and hour: one GROUP BY over the statement's rows.
    INSERT INTO campaign_tracking_buckets AS b (campaign_id, kind, unit, bucket_start, events)
    SELECT d.campaign_id, d.kind, u.unit, timezone('UTC', date_trunc(u.unit, timezone('UTC', d.occurred_at))),
           sum(d.sign)
      FROM ({delta}) d CROSS JOIN (VALUES ('minute'), ('hour')) u(unit)
     WHERE d.campaign_id IS NOT NULL
     GROUP BY 1, 2, 3, 4
    HAVING sum(d.sign) <> 0
     ORDER BY 1, 2, 3, 4
    ON CONFLICT (campaign_id, kind, unit, bucket_start) DO UPDATE SET events = b.events + EXCLUDED.events;

    -- 3. Uniques: per delivery (unsubscribes: customer) of the statement, one probe of
    --    ix_tracking_campaign_kind_delivery (ix_tracking_customer_kind) for its events now.
    UPDATE campaign_tracking_totals tt SET uniques = tt.uniques + u.delta
      FROM (SELECT k.campaign_id, k.kind,
                   sum((k.after > 0)::int - ((k.after - k.n_new + k.n_old) > 0)::int) AS delta
              FROM (SELECT g.*,
                           CASE WHEN g.kind = 'unsubscribe' THEN
                               (SELECT count(*) FROM tracking_events t
                                 WHERE t.customer_id = g.who AND t.kind = 'unsubscribe' AND t.campaign_id = g.campaign_id)
                           ELSE (SELECT count(*) FROM tracking_events t
                                  WHERE t.campaign_id = g.campaign_id AND t.kind = g.kind AND t.delivery_id = g.who)
                           END AS after
                      FROM (SELECT d.campaign_id, d.kind,
                                   CASE WHEN d.kind = 'unsubscribe' THEN d.customer_id ELSE d.delivery_id END AS who,
                                   count(*) FILTER (WHERE d.sign > 0) AS n_new,
                                   count(*) FILTER (WHERE d.sign < 0) AS n_old
                              FROM ({delta}) d
                             WHERE d.campaign_id IS NOT NULL
                               AND (CASE WHEN d.kind = 'unsubscribe' THEN d.customer_id ELSE d.delivery_id END)
                                   IS NOT NULL
                             GROUP BY 1, 2, 3) g) k
             GROUP BY k.campaign_id, k.kind
            HAVING sum((k.after > 0)::int - ((k.after - k.n_new + k.n_old) > 0)::int) <> 0) u
     WHERE tt.campaign_id = u.campaign_id AND tt.kind = u.kind;

    -- 4. Clicks and unique clicks per link: the same count, per (delivery, URL key).
    INSERT INTO campaign_link_counts AS l (campaign_id, url_key, url, clicks, unique_clicks)
    SELECT c.campaign_id, c.url_key, c.url, c.clicks, coalesce(q.delta, 0)
      FROM (SELECT d.campaign_id, substr(coalesce(d.url, ''), 1, {n}) AS url_key, min(d.url) AS url,
                   sum(d.sign) AS clicks
              FROM ({delta}) d
             WHERE d.campaign_id IS NOT NULL AND d.kind = 'click'
             GROUP BY 1, 2) c
      LEFT JOIN (SELECT k.campaign_id, k.url_key,
                        sum((k.after > 0)::int - ((k.after - k.n_new + k.n_old) > 0)::int) AS delta
                   FROM (SELECT g.*,
                                (SELECT count(*) FROM tracking_events t
                                  WHERE t.campaign_id = g.campaign_id AND t.kind = 'click'
                                    AND t.delivery_id = g.delivery_id
                                    AND substr(coalesce(t.url, ''), 1, {n}) = g.url_key) AS after
                           FROM (SELECT d.campaign_id, substr(coalesce(d.url, ''), 1, {n}) AS url_key, d.delivery_id,
                                        count(*) FILTER (WHERE d.sign > 0) AS n_new,
                                        count(*) FILTER (WHERE d.sign < 0) AS n_old
                                   FROM ({delta}) d
                                  WHERE d.campaign_id IS NOT NULL AND d.kind = 'click' AND d.delivery_id IS NOT NULL
                                  GROUP BY 1, 2, 3) g) k
                  GROUP BY k.campaign_id, k.url_key) q
        ON q.campaign_id = c.campaign_id AND q.url_key = c.url_key
     WHERE c.clicks <> 0 OR coalesce(q.delta, 0) <> 0
     ORDER BY 1, 2
    ON CONFLICT (campaign_id, url_key) DO UPDATE
       SET clicks = l.clicks + EXCLUDED.clicks, unique_clicks = l.unique_clicks + EXCLUDED.unique_clicks;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""

#: Transition tables cannot go with a column list (UPDATE OF ...), so the UPDATE trigger fires
#: on every UPDATE; erasure's ip / user_agent change nets to zero and writes nothing but the
#: lock of step 1.
PG_UPGRADE = "".join(_PG_FUNCTION.format(op=op_, delta=delta, n=URL_KEY_CHARS) for op_, delta in _PG_DELTA.items()) + """
CREATE TRIGGER tracking_rollup_insert AFTER INSERT ON tracking_events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION tracking_rollup_insert();
CREATE TRIGGER tracking_rollup_delete AFTER DELETE ON tracking_events
    REFERENCING OLD TABLE AS old_events FOR EACH STATEMENT EXECUTE FUNCTION tracking_rollup_delete();
CREATE TRIGGER tracking_rollup_update AFTER UPDATE ON tracking_events
    REFERENCING OLD TABLE AS old_events NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION tracking_rollup_update();
"""
PG_DOWNGRADE = """
DROP TRIGGER IF EXISTS tracking_rollup_insert ON tracking_events;
DROP TRIGGER IF EXISTS tracking_rollup_delete ON tracking_events;
DROP TRIGGER IF EXISTS tracking_rollup_update ON tracking_events;
DROP FUNCTION IF EXISTS tracking_rollup_insert();
DROP FUNCTION IF EXISTS tracking_rollup_delete();
DROP FUNCTION IF EXISTS tracking_rollup_update();
"""


# -- backfill (both) ---------------------------------------------------------------------------------
def backfill_statements(dialect: str) -> list[str]:
    """Set-based: one INSERT ... SELECT ... GROUP BY per rollup over the existing events.

    The same definitions as the triggers: uniques are distinct non-NULL deliveries
    (unsubscribes: customers); buckets are UTC minutes and hours; links by URL key.
    """
    if dialect == "postgresql":
        trunc = "timezone('UTC', date_trunc('{unit}', timezone('UTC', occurred_at)))"
    else:
        trunc = "strftime('{fmt}', occurred_at)"
    formats = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00"}
    out = [
        # Per (campaign, kind): the GROUP BY reads ix_tracking_campaign_kind_delivery in order.
        """INSERT INTO campaign_tracking_totals (campaign_id, kind, events, uniques)
           SELECT campaign_id, kind, count(*),
                  CASE WHEN kind = 'unsubscribe' THEN count(DISTINCT customer_id) ELSE count(DISTINCT delivery_id) END
             FROM tracking_events WHERE campaign_id IS NOT NULL GROUP BY campaign_id, kind""",
    ]
    for unit, fmt in formats.items():
        bucket = trunc.format(unit=unit, fmt=fmt)
        out.append(f"""INSERT INTO campaign_tracking_buckets (campaign_id, kind, unit, bucket_start, events)
           SELECT campaign_id, kind, '{unit}', {bucket}, count(*)
             FROM tracking_events WHERE campaign_id IS NOT NULL
            GROUP BY campaign_id, kind, {bucket}""")  # nosec B608 - constant SQL
    out.append(f"""INSERT INTO campaign_link_counts (campaign_id, url_key, url, clicks, unique_clicks)
           SELECT campaign_id, substr(coalesce(url, ''), 1, {URL_KEY_CHARS}), min(url), count(*),
                  count(DISTINCT delivery_id)
             FROM tracking_events WHERE campaign_id IS NOT NULL AND kind = 'click'
            GROUP BY campaign_id, substr(coalesce(url, ''), 1, {URL_KEY_CHARS})""")  # nosec B608 - constant SQL
    return out


def upgrade() -> None:
    op.create_table(
        'campaign_tracking_totals',
        sa.Column('campaign_id', _ID, nullable=False),
        sa.Column('kind', _KIND, nullable=False),
        sa.Column('events', sa.BigInteger(), nullable=False),
        sa.Column('uniques', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('campaign_id', 'kind'),
    )
    op.create_table(
        'campaign_tracking_buckets',
        sa.Column('campaign_id', _ID, nullable=False),
        sa.Column('kind', _KIND, nullable=False),
        sa.Column('unit', sa.String(length=10), nullable=False),
        sa.Column('bucket_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('events', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('campaign_id', 'kind', 'unit', 'bucket_start'),
    )
    op.create_table(
        'campaign_link_counts',
        sa.Column('campaign_id', _ID, nullable=False),
        sa.Column('url_key', sa.Text(), nullable=False),
        sa.Column('url', sa.Text(), nullable=True),
        sa.Column('clicks', sa.BigInteger(), nullable=False),
        sa.Column('unique_clicks', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('campaign_id', 'url_key'),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_UPGRADE)
    else:
        for statement in SQLITE_UPGRADE:
            op.execute(statement)
    for statement in backfill_statements(dialect):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_DOWNGRADE)
    else:
        for statement in SQLITE_DOWNGRADE:
            op.execute(statement)
    op.drop_table('campaign_link_counts')
    op.drop_table('campaign_tracking_buckets')
    op.drop_table('campaign_tracking_totals')
