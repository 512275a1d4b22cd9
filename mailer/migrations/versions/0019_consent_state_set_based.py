"""consent_state derived once per statement (PostgreSQL) or once per import batch (SQLite).

Issue 22 part 5: the bulk consent import spent most of its time in the per-row
``consent_events_derive_state`` trigger.  The guarantee stays as migration 0002 set it
(no application code writes ``consent_state``; the guard triggers refuse every write
that is not the ledger's derivation); what changes is how often the derivation runs.

* **PostgreSQL**: ``consent_events_derive_state`` becomes a statement-level AFTER INSERT
  trigger with a transition table (``REFERENCING NEW TABLE AS new_events``).  It upserts,
  per (customer, purpose) in the statement, the new event that is the ledger's latest
  for that pair; a back-dated event never replaces a later decision, as before.  A one-row INSERT (``mailer consent grant``) derives exactly as
  before; a COPY of 20,000 events derives in one set-based statement.  The row guard on
  ``consent_state`` still checks every state row the upsert writes.
* **SQLite** has only row triggers.  ``consent_derive_batches`` holds an *open batch*:
  the seq range ``[first_seq, last_seq]`` an import is about to append.  The row trigger
  skips events inside an open batch, and DELETE of the batch row derives the state of the
  whole range in one set-based upsert (trigger ``consent_derive_batches_derive``), which
  the unchanged guard triggers check row by row.  A batch can only be opened past the
  chain's head (events already appended were derived), cannot be changed (UPDATE refused),
  and **cannot be committed**: ``pending`` is a deferred foreign key to ``first_seq = 0``,
  a row that can never exist (CHECK ``first_seq > 0``), so COMMIT fails with a foreign-key
  error while any batch is open, and the transaction's events go nowhere.  The table is
  empty at every commit.
* PostgreSQL has the table too (one schema for both, see the models) but refuses any
  row in it: its derivation needs no batch.

Revision ID: 0019
Revises: 0017
"""
import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0017'
branch_labels = None
depends_on = None

# -- PostgreSQL --------------------------------------------------------------------------------------
PG_UPGRADE = """
DROP TRIGGER IF EXISTS consent_events_derive_state ON consent_events;
CREATE OR REPLACE FUNCTION consent_state_derive_statement() RETURNS trigger AS $$
BEGIN
    -- Per (customer, purpose) of the statement: the new event that is the ledger's
    -- latest (by occurred_at, then id), upserted.  The LATERAL ... LIMIT 1 is one
    -- backward probe of ix_consent_events_customer_purpose per new event, whatever the
    -- table's size or statistics (a NOT EXISTS was planned as an anti-join over the
    -- whole table, which grows with every batch).  A pair whose latest decision is older
    -- than the statement (a back-dated import) selects nothing and keeps its state.  Each
    -- pair selects at most one event, so ON CONFLICT touches a row once, and every
    -- proposed row is what the guard trigger accepts (it fires on the proposed INSERT
    -- row even when the conflict turns it into an UPDATE).
    INSERT INTO consent_state AS cs (customer_id, purpose, granted, basis, event_id, updated_at)
    SELECT n.customer_id, n.purpose, (n.action = 'granted'), n.basis, n.id, n.occurred_at
      FROM new_events n
     CROSS JOIN LATERAL (SELECT l.id FROM consent_events l
                          WHERE l.customer_id = n.customer_id AND l.purpose = n.purpose
                          ORDER BY l.occurred_at DESC, l.id DESC LIMIT 1) latest
     WHERE n.customer_id IS NOT NULL AND latest.id = n.id
    ON CONFLICT (customer_id, purpose) DO UPDATE
       SET granted = EXCLUDED.granted, basis = EXCLUDED.basis, event_id = EXCLUDED.event_id,
           updated_at = EXCLUDED.updated_at;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consent_events_derive_state AFTER INSERT ON consent_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION consent_state_derive_statement();

CREATE OR REPLACE FUNCTION consent_derive_batches_refused() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'consent_derive_batches is for SQLite imports; PostgreSQL derives consent_state per statement';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consent_derive_batches_refused BEFORE INSERT OR UPDATE ON consent_derive_batches
    FOR EACH ROW EXECUTE FUNCTION consent_derive_batches_refused();
"""

#: Migration 0002's row trigger, restored by downgrade.
PG_DOWNGRADE = """
DROP TRIGGER IF EXISTS consent_events_derive_state ON consent_events;
DROP FUNCTION IF EXISTS consent_state_derive_statement();
DROP TRIGGER IF EXISTS consent_derive_batches_refused ON consent_derive_batches;
DROP FUNCTION IF EXISTS consent_derive_batches_refused();
CREATE TRIGGER consent_events_derive_state AFTER INSERT ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_state_derive();
"""

# -- SQLite ------------------------------------------------------------------------------------------
#: 0002's per-row derivation (unchanged), as the body of the row trigger.
_DERIVE_ROW = """
    UPDATE consent_state SET granted = (NEW.action = 'granted'), basis = NEW.basis, event_id = NEW.id,
                             updated_at = NEW.occurred_at
     WHERE customer_id = NEW.customer_id AND purpose = NEW.purpose AND updated_at <= NEW.occurred_at;
    INSERT INTO consent_state (customer_id, purpose, granted, basis, event_id, updated_at)
    SELECT NEW.customer_id, NEW.purpose, (NEW.action = 'granted'), NEW.basis, NEW.id, NEW.occurred_at
     WHERE NOT EXISTS (SELECT 1 FROM consent_state WHERE customer_id = NEW.customer_id AND purpose = NEW.purpose);
"""

SQLITE_UPGRADE = [
    "DROP TRIGGER IF EXISTS consent_events_derive_state",
    # An event inside an open batch is derived when the batch closes (the table holds at
    # most one row, so the NOT EXISTS is one tiny probe per event).
    f"""CREATE TRIGGER consent_events_derive_state AFTER INSERT ON consent_events
        WHEN NEW.customer_id IS NOT NULL
         AND NOT EXISTS (SELECT 1 FROM consent_derive_batches b
                          WHERE NEW.seq >= b.first_seq AND NEW.seq <= b.last_seq)
        BEGIN {_DERIVE_ROW} END""",  # nosec B608 - _DERIVE_ROW is this migration's constant SQL, never input
    # Closing a batch: per (customer, purpose) of the range, the event that is the
    # ledger's latest (no event at all, in or out of the range, is later; the NOT EXISTS
    # walks ix_consent_events_customer_purpose), upserted.  A pair whose latest decision
    # lies outside the range (a back-dated import) selects nothing and keeps its state.
    # "WHERE true"-style filters are needed before ON CONFLICT in an INSERT ... SELECT.
    """CREATE TRIGGER consent_derive_batches_derive AFTER DELETE ON consent_derive_batches
        BEGIN
        INSERT INTO consent_state (customer_id, purpose, granted, basis, event_id, updated_at)
        SELECT e.customer_id, e.purpose, (e.action = 'granted'), e.basis, e.id, e.occurred_at
          FROM consent_events e
         WHERE e.seq >= OLD.first_seq AND e.seq <= OLD.last_seq AND e.customer_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM consent_events l
                            WHERE l.customer_id = e.customer_id AND l.purpose = e.purpose
                              AND (l.occurred_at > e.occurred_at
                                   OR (l.occurred_at = e.occurred_at AND l.id > e.id)))
        ON CONFLICT (customer_id, purpose) DO UPDATE
           SET granted = excluded.granted, basis = excluded.basis, event_id = excluded.event_id,
               updated_at = excluded.updated_at;
        END""",
    """CREATE TRIGGER consent_derive_batches_no_update BEFORE UPDATE ON consent_derive_batches
       BEGIN SELECT RAISE(ABORT, 'consent_derive_batches: an open batch cannot be changed, only closed (DELETE)'); END""",
    # Only events yet to be appended may be deferred.
    """CREATE TRIGGER consent_derive_batches_past_head BEFORE INSERT ON consent_derive_batches
       WHEN NEW.first_seq <= (SELECT COALESCE(MAX(seq), 0) FROM consent_events)
       BEGIN SELECT RAISE(ABORT, 'consent_derive_batches: a batch must start after the chain head'); END""",
]

SQLITE_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS consent_derive_batches_derive",
    "DROP TRIGGER IF EXISTS consent_derive_batches_no_update",
    "DROP TRIGGER IF EXISTS consent_derive_batches_past_head",
    "DROP TRIGGER IF EXISTS consent_events_derive_state",
    f"""CREATE TRIGGER consent_events_derive_state AFTER INSERT ON consent_events
        WHEN NEW.customer_id IS NOT NULL BEGIN {_DERIVE_ROW} END""",
]


def upgrade() -> None:
    op.create_table(
        'consent_derive_batches',
        sa.Column('first_seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('last_seq', sa.BigInteger(), nullable=False),
        # Always 0, which no first_seq can be: the deferred check fails at COMMIT while
        # the row exists, so an open batch is never committed.
        sa.Column('pending', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
        sa.CheckConstraint('first_seq > 0 AND last_seq >= first_seq', name='ck_consent_derive_batches_range'),
        sa.CheckConstraint('pending = 0', name='ck_consent_derive_batches_pending'),
        sa.ForeignKeyConstraint(['pending'], ['consent_derive_batches.first_seq'],
                                name='fk_consent_derive_batches_open', deferrable=True, initially='DEFERRED'),
        sa.PrimaryKeyConstraint('first_seq'),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_UPGRADE)
    else:
        for statement in SQLITE_UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_DOWNGRADE)
    else:
        for statement in SQLITE_DOWNGRADE:
            op.execute(statement)
    op.drop_table('consent_derive_batches')
