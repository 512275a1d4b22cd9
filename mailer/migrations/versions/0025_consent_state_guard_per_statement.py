"""consent_state's guard checks each statement's rows set-based (PostgreSQL).

Issue 22 part 5, continued: after migration 0019 the bulk import's derivation writes
``consent_state`` in one statement per batch, but the guard of migration 0002 still ran
its PL/pgSQL function once per row (two subqueries each: the event by its id, then "no
later event"), 5 s of 60 per 40,000 events at load 30.  The guarantee is unchanged:
every INSERT or UPDATE of ``consent_state`` whose rows are not the ledger's derivation
fails, and so does the whole statement (and its transaction).  What changes is when the
check runs: an AFTER ... FOR EACH STATEMENT trigger reads the statement's rows from its
transition table (``REFERENCING NEW TABLE``) and refuses the statement if any row is not
what the ledger says, in one query.  A row matches the ledger when its ``event_id`` is
the latest event of its (customer, purpose) (by ``occurred_at``, then ``id``) and its
outcome, basis and time are that event's: the same condition as 0002's, written as one
backward probe of ``ix_consent_events_customer_purpose`` per row.  An UPDATE must also
keep the keys: every new row's (customer_id, purpose) is among the updated rows' old
keys.  DELETE and TRUNCATE stay refused as before (row and statement triggers of 0002).
SQLite keeps its row triggers (it has no transition tables).

Revision ID: 0025
Revises: 0019
"""
from alembic import op

revision = '0025'
down_revision = '0021'
branch_labels = None
depends_on = None

#: The first row of ``new_rows`` that does not match the ledger, into ``bad``.
#: LATERAL ... LIMIT 1: one backward probe of ix_consent_events_customer_purpose per
#: row, whatever the planner guesses about a transition table (it has no statistics; a
#: NOT EXISTS could be planned as an anti-join over all of consent_events).
_MISMATCH = """
    SELECT n.customer_id, n.purpose INTO bad FROM new_rows n
      LEFT JOIN LATERAL (SELECT l.id, l.action, l.basis, l.occurred_at FROM consent_events l
                          WHERE l.customer_id = n.customer_id AND l.purpose = n.purpose
                          ORDER BY l.occurred_at DESC, l.id DESC LIMIT 1) latest ON true
     WHERE latest.id IS DISTINCT FROM n.event_id
        OR (latest.action = 'granted') IS DISTINCT FROM n.granted
        OR latest.basis IS DISTINCT FROM n.basis
        OR latest.occurred_at IS DISTINCT FROM n.updated_at
     LIMIT 1"""

PG_UPGRADE = f"""
DROP TRIGGER IF EXISTS consent_state_guard_write ON consent_state;
CREATE OR REPLACE FUNCTION consent_state_guard_statement() RETURNS trigger AS $$
DECLARE
    bad record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- Keys are unique before and after, and the old and new transition tables hold
        -- the same number of rows: every new key among the old ones means no key changed
        -- (an anti-join by the key; old_rows is at most the statement's size).
        SELECT n.customer_id, n.purpose INTO bad FROM new_rows n
         WHERE NOT EXISTS (SELECT 1 FROM old_rows o
                            WHERE o.customer_id = n.customer_id AND o.purpose = n.purpose)
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'consent_state is derived from consent_events: UPDATE of its key refused';
        END IF;
    END IF;
    {_MISMATCH.strip()};
    IF FOUND THEN
        RAISE EXCEPTION 'consent_state is derived from consent_events: % of (customer %, %) refused, '
                        'it does not match the ledger', TG_OP, bad.customer_id, bad.purpose;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consent_state_guard_insert AFTER INSERT ON consent_state
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION consent_state_guard_statement();
CREATE TRIGGER consent_state_guard_update AFTER UPDATE ON consent_state
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION consent_state_guard_statement();
"""  # nosec B608 - constant SQL (the guard function and its triggers)

#: Migration 0002's row guard for INSERT and UPDATE, restored by downgrade.
PG_DOWNGRADE = """
DROP TRIGGER IF EXISTS consent_state_guard_insert ON consent_state;
DROP TRIGGER IF EXISTS consent_state_guard_update ON consent_state;
DROP FUNCTION IF EXISTS consent_state_guard_statement();
CREATE TRIGGER consent_state_guard_write BEFORE INSERT OR UPDATE ON consent_state
    FOR EACH ROW EXECUTE FUNCTION consent_state_guard();
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_DOWNGRADE)
