"""Consent chain format v2 and a consent_state that only the ledger can write.

* ``consent_events.chain_format``: 1 for every event that exists when this migration
  runs (their hashes stay as they are and still verify), 2 for every event appended
  afterwards; a v2 hash also covers ``customer_id`` and ``chain_format`` itself.
* ``consent_chain_formats`` records the boundary: the first ``seq`` of each format.
  Verification refuses a v1 event at or after the v2 boundary.
* ``consent_state`` is derived by a trigger on ``consent_events`` INSERT (no
  application code writes it), and guard triggers refuse every other INSERT or UPDATE
  whose row is not the derivation of the ledger (the row's ``event_id`` must be the
  latest event of that customer and purpose, with the same outcome, basis and time),
  any change of a row's key, and every DELETE (and TRUNCATE on PostgreSQL).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

#: The state row NEW (alias-free, as in a trigger) is what the ledger says.
_MATCHES_LEDGER = """EXISTS (SELECT 1 FROM consent_events e
    WHERE e.id = NEW.event_id AND e.customer_id = NEW.customer_id AND e.purpose = NEW.purpose
      AND (e.action = 'granted') = NEW.granted AND e.basis = NEW.basis AND e.occurred_at = NEW.updated_at
      AND NOT EXISTS (SELECT 1 FROM consent_events l
                      WHERE l.customer_id = e.customer_id AND l.purpose = e.purpose
                        AND (l.occurred_at > e.occurred_at OR (l.occurred_at = e.occurred_at AND l.id > e.id))))"""

_DERIVE_BODY = """
    UPDATE consent_state SET granted = (NEW.action = 'granted'), basis = NEW.basis, event_id = NEW.id,
                             updated_at = NEW.occurred_at
     WHERE customer_id = NEW.customer_id AND purpose = NEW.purpose AND updated_at <= NEW.occurred_at;
    INSERT INTO consent_state (customer_id, purpose, granted, basis, event_id, updated_at)
    SELECT NEW.customer_id, NEW.purpose, (NEW.action = 'granted'), NEW.basis, NEW.id, NEW.occurred_at
     WHERE NOT EXISTS (SELECT 1 FROM consent_state WHERE customer_id = NEW.customer_id AND purpose = NEW.purpose);
"""

PG_TRIGGERS = f"""
CREATE OR REPLACE FUNCTION consent_state_derive() RETURNS trigger AS $$
BEGIN
    -- A back-dated event (an import) does not replace a later decision.
    IF NEW.customer_id IS NOT NULL THEN
        {_DERIVE_BODY}
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consent_events_derive_state AFTER INSERT ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_state_derive();

CREATE OR REPLACE FUNCTION consent_state_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'consent_state is derived from consent_events: % refused', TG_OP;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.customer_id <> OLD.customer_id OR NEW.purpose <> OLD.purpose) THEN
        RAISE EXCEPTION 'consent_state is derived from consent_events: UPDATE of its key refused';
    END IF;
    IF NOT {_MATCHES_LEDGER} THEN
        RAISE EXCEPTION 'consent_state is derived from consent_events: % of (customer %, %) refused, '
                        'it does not match the ledger', TG_OP, NEW.customer_id, NEW.purpose;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consent_state_guard_write BEFORE INSERT OR UPDATE ON consent_state
    FOR EACH ROW EXECUTE FUNCTION consent_state_guard();
CREATE TRIGGER consent_state_guard_delete BEFORE DELETE ON consent_state
    FOR EACH ROW EXECUTE FUNCTION consent_state_guard();
CREATE TRIGGER consent_state_guard_truncate BEFORE TRUNCATE ON consent_state
    FOR EACH STATEMENT EXECUTE FUNCTION consent_state_guard();

CREATE OR REPLACE FUNCTION consent_chain_formats_fixed() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'consent_chain_formats is fixed by migrations: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consent_chain_formats_fixed BEFORE UPDATE OR DELETE ON consent_chain_formats
    FOR EACH ROW EXECUTE FUNCTION consent_chain_formats_fixed();
"""

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER consent_events_derive_state AFTER INSERT ON consent_events
        WHEN NEW.customer_id IS NOT NULL BEGIN {_DERIVE_BODY} END""",
    # The statements are fixed text (no input reaches them); the shared condition is
    # spliced in with str.replace.
    """CREATE TRIGGER consent_state_guard_insert BEFORE INSERT ON consent_state WHEN NOT MATCHES_LEDGER
        BEGIN SELECT RAISE(ABORT, 'consent_state is derived from consent_events: INSERT refused, it does not match the ledger'); END""".replace("MATCHES_LEDGER", _MATCHES_LEDGER),  # nosec B608 - fixed DDL, no input
    """CREATE TRIGGER consent_state_guard_update BEFORE UPDATE ON consent_state
        WHEN NEW.customer_id IS NOT OLD.customer_id OR NEW.purpose IS NOT OLD.purpose OR NOT MATCHES_LEDGER
        BEGIN SELECT RAISE(ABORT, 'consent_state is derived from consent_events: UPDATE refused, it does not match the ledger'); END""".replace("MATCHES_LEDGER", _MATCHES_LEDGER),  # nosec B608 - fixed DDL, no input
    """CREATE TRIGGER consent_state_guard_delete BEFORE DELETE ON consent_state
       BEGIN SELECT RAISE(ABORT, 'consent_state is derived from consent_events: DELETE refused'); END""",
    """CREATE TRIGGER consent_chain_formats_no_update BEFORE UPDATE ON consent_chain_formats
       BEGIN SELECT RAISE(ABORT, 'consent_chain_formats is fixed by migrations: UPDATE refused'); END""",
    """CREATE TRIGGER consent_chain_formats_no_delete BEFORE DELETE ON consent_chain_formats
       BEGIN SELECT RAISE(ABORT, 'consent_chain_formats is fixed by migrations: DELETE refused'); END""",
]

SQLITE_TRIGGER_NAMES = ("consent_events_derive_state", "consent_state_guard_insert", "consent_state_guard_update",
                        "consent_state_guard_delete", "consent_chain_formats_no_update",
                        "consent_chain_formats_no_delete")


def upgrade() -> None:
    op.add_column('consent_events', sa.Column('chain_format', sa.SmallInteger(), server_default=sa.text('1'),
                                              nullable=False))
    formats = op.create_table('consent_chain_formats',
    sa.Column('chain_format', sa.SmallInteger(), autoincrement=False, nullable=False),
    sa.Column('first_seq', sa.BigInteger(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.PrimaryKeyConstraint('chain_format')
    )
    bind = op.get_bind()
    head = bind.execute(sa.text("SELECT COALESCE(MAX(seq), 0) FROM consent_events")).scalar()
    op.bulk_insert(formats, [{"chain_format": 1, "first_seq": 1}, {"chain_format": 2, "first_seq": head + 1}])
    if bind.dialect.name == "postgresql":
        op.execute(PG_TRIGGERS)
    elif bind.dialect.name == "sqlite":
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS consent_events_derive_state ON consent_events")
        for name in ("consent_state_guard_write", "consent_state_guard_delete", "consent_state_guard_truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON consent_state")
        op.execute("DROP TRIGGER IF EXISTS consent_chain_formats_fixed ON consent_chain_formats")
        for fn in ("consent_state_derive", "consent_state_guard", "consent_chain_formats_fixed"):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}()")
    else:
        for name in SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table('consent_chain_formats')
    # Plain DDL (SQLite >= 3.35 drops a column in place): a batch table copy would drop
    # the append-only triggers 0001 put on consent_events.
    op.execute("ALTER TABLE consent_events DROP COLUMN chain_format")
