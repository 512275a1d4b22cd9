"""Initial schema: every table the capabilities need (see mailer/models.py).

consent_events is append-only: triggers refuse UPDATE and DELETE on PostgreSQL and SQLite.

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 00:20:27.626656
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash'),
    sa.UniqueConstraint('name')
    )
    op.create_table('campaigns',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('template', sa.String(length=200), nullable=False),
    sa.Column('segment', sa.String(length=100), nullable=False),
    sa.Column('purpose', sa.String(length=100), nullable=False),
    sa.Column('subjects', sa.JSON(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('status', sa.Enum('draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled', name='campaignstatus', native_enum=False, length=20), nullable=False),
    sa.Column('send_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('local_time', sa.String(length=5), nullable=True),
    sa.Column('tracking', sa.Boolean(), nullable=False),
    sa.Column('cursor', sa.BigInteger(), nullable=False),
    sa.Column('fanout_done', sa.Boolean(), nullable=False),
    sa.Column('fanout_heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('idempotency_records',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('scope', sa.String(length=100), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('scope', 'key', name='uq_idempotency_records_scope_key')
    )
    op.create_table('customers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('email_hash', sa.String(length=64), nullable=False),
    sa.Column('first_name', sa.String(length=200), nullable=True),
    sa.Column('last_name', sa.String(length=200), nullable=True),
    sa.Column('locale', sa.String(length=20), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=True),
    sa.Column('country', sa.String(length=2), nullable=True),
    sa.Column('total_spent', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('orders_count', sa.Integer(), nullable=False),
    sa.Column('last_order_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('predicted_spend_tier', sa.Enum('high', 'medium', 'low', name='spendtier', native_enum=False, length=20), nullable=True),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email')
    )
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index('ix_customers_created_at', ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_customers_email_hash'), ['email_hash'], unique=False)
        batch_op.create_index('ix_customers_last_order_at', ['last_order_at'], unique=False)
        batch_op.create_index('ix_customers_orders_count', ['orders_count'], unique=False)
        batch_op.create_index('ix_customers_total_spent', ['total_spent'], unique=False)

    op.create_table('suppressions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email_hash', sa.String(length=64), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('reason', sa.Enum('hard_bounce', 'soft_bounce', 'complaint', 'unsubscribe', 'erased', 'manual', name='suppressionreason', native_enum=False, length=20), nullable=False),
    sa.Column('scope', sa.String(length=100), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email_hash', 'reason', 'scope', name='uq_suppressions_hash_reason_scope')
    )
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.create_index('ix_suppressions_email_hash', ['email_hash'], unique=False)

    op.create_table('consent_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('subject_hash', sa.String(length=64), nullable=False),
    sa.Column('purpose', sa.String(length=100), nullable=False),
    sa.Column('action', sa.Enum('granted', 'withdrawn', name='consentaction', native_enum=False, length=20), nullable=False),
    sa.Column('basis', sa.Enum('consent', 'soft_opt_in', name='lawfulbasis', native_enum=False, length=20), nullable=False),
    sa.Column('source', sa.Enum('checkout', 'signup_form', 'api', 'import', 'unsubscribe_link', 'preference_centre', 'admin', 'complaint', name='consentsource', native_enum=False, length=20), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('form_id', sa.String(length=200), nullable=True),
    sa.Column('wording', sa.Text(), nullable=True),
    sa.Column('wording_version', sa.String(length=50), nullable=True),
    sa.Column('wording_sha256', sa.String(length=64), nullable=True),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ip_digest', sa.String(length=64), nullable=True),
    sa.Column('user_agent_digest', sa.String(length=64), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hash'),
    sa.UniqueConstraint('seq')
    )
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.create_index('ix_consent_events_customer_purpose', ['customer_id', 'purpose', 'occurred_at', 'id'], unique=False)
        batch_op.create_index('ix_consent_events_occurred_at', ['occurred_at'], unique=False)
        batch_op.create_index('ix_consent_events_subject_hash', ['subject_hash'], unique=False)

    op.create_table('customer_tags',
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tag', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('customer_id', 'tag')
    )
    with op.batch_alter_table('customer_tags', schema=None) as batch_op:
        batch_op.create_index('ix_customer_tags_tag', ['tag', 'customer_id'], unique=False)

    op.create_table('deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=100), nullable=False),
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('to_address', sa.String(length=320), nullable=True),
    sa.Column('to_hash', sa.String(length=64), nullable=False),
    sa.Column('locale', sa.String(length=20), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('purpose', sa.String(length=100), nullable=False),
    sa.Column('queue', sa.String(length=20), nullable=False),
    sa.Column('status', sa.Enum('scheduled', 'queued', 'sending', 'sent', 'failed', 'bounced', 'suppressed', 'skipped', 'cancelled', 'held', name='deliverystatus', native_enum=False, length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=100), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('send_after', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancel_group', sa.String(length=255), nullable=True),
    sa.Column('automation', sa.String(length=100), nullable=True),
    sa.Column('message_id', sa.String(length=255), nullable=True),
    sa.Column('relay', sa.String(length=255), nullable=True),
    sa.Column('smtp_code', sa.Integer(), nullable=True),
    sa.Column('smtp_reply', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key'),
    sa.UniqueConstraint('message_id')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_campaign_status', ['campaign_id', 'status'], unique=False)
        batch_op.create_index('ix_deliveries_cancel_group', ['cancel_group'], unique=False)
        batch_op.create_index('ix_deliveries_to_hash', ['to_hash'], unique=False)
        batch_op.create_index('ix_deliveries_customer_sent', ['customer_id', 'sent_at'], unique=False)
        batch_op.create_index('ix_deliveries_status_send_after', ['status', 'send_after'], unique=False)

    op.create_table('shop_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('type', sa.String(length=50), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key')
    )
    with op.batch_alter_table('shop_events', schema=None) as batch_op:
        batch_op.create_index('ix_shop_events_type_received', ['type', 'received_at'], unique=False)
        batch_op.create_index('ix_shop_events_customer', ['customer_id'], unique=False)

    op.create_table('bounces',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('delivery_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('email_hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('status_code', sa.String(length=20), nullable=True),
    sa.Column('reason', sa.String(length=100), nullable=True),
    sa.Column('raw', sa.Text(), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bounces_email_hash'), ['email_hash'], unique=False)

    op.create_table('consent_evidence',
    sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['consent_events.id'], ),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('consent_requests',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('purpose', sa.String(length=100), nullable=False),
    sa.Column('basis', sa.Enum('consent', 'soft_opt_in', name='lawfulbasis', native_enum=False, length=20), nullable=False),
    sa.Column('source', sa.Enum('checkout', 'signup_form', 'api', 'import', 'unsubscribe_link', 'preference_centre', 'admin', 'complaint', name='consentsource', native_enum=False, length=20), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('proof', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['event_id'], ['consent_events.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('consent_state',
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('purpose', sa.String(length=100), nullable=False),
    sa.Column('granted', sa.Boolean(), nullable=False),
    sa.Column('basis', sa.Enum('consent', 'soft_opt_in', name='lawfulbasis', native_enum=False, length=20), nullable=False),
    sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['event_id'], ['consent_events.id'], ),
    sa.PrimaryKeyConstraint('customer_id', 'purpose')
    )
    with op.batch_alter_table('consent_state', schema=None) as batch_op:
        batch_op.create_index('ix_consent_state_purpose', ['purpose', 'granted', 'customer_id'], unique=False)

    op.create_table('csat_ratings',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_number', sa.String(length=100), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('delivery_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('rating', sa.Integer(), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_number')
    )
    op.create_table('reward_codes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('pool', sa.String(length=100), nullable=False),
    sa.Column('code', sa.String(length=100), nullable=False),
    sa.Column('value', sa.String(length=50), nullable=True),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('delivery_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('pool', 'code', name='uq_reward_codes_pool_code')
    )
    with op.batch_alter_table('reward_codes', schema=None) as batch_op:
        batch_op.create_index('ix_reward_codes_pool_free', ['pool', 'assigned_at', 'id'], unique=False)

    op.create_table('tracking_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('delivery_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('kind', sa.Enum('open', 'machine_open', 'click', 'unsubscribe', 'complaint', 'bounce', name='trackingkind', native_enum=False, length=20), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.Text(), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tracking_events', schema=None) as batch_op:
        batch_op.create_index('ix_tracking_campaign_kind', ['campaign_id', 'kind', 'occurred_at'], unique=False)
        batch_op.create_index('ix_tracking_customer_kind', ['customer_id', 'kind', 'occurred_at'], unique=False)
        batch_op.create_index('ix_tracking_occurred_at', ['occurred_at'], unique=False)

    _create_append_only_triggers()


PG_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION consent_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'consent_events is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consent_events_no_update BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_events_append_only();
CREATE TRIGGER consent_events_no_truncate BEFORE TRUNCATE ON consent_events
    FOR EACH STATEMENT EXECUTE FUNCTION consent_events_append_only();
"""

SQLITE_APPEND_ONLY = [
    """CREATE TRIGGER consent_events_no_update BEFORE UPDATE ON consent_events
       BEGIN SELECT RAISE(ABORT, 'consent_events is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER consent_events_no_delete BEFORE DELETE ON consent_events
       BEGIN SELECT RAISE(ABORT, 'consent_events is append-only: DELETE refused'); END""",
]


def _create_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_APPEND_ONLY)
    elif dialect == "sqlite":
        for statement in SQLITE_APPEND_ONLY:
            op.execute(statement)


def _drop_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS consent_events_no_update ON consent_events")
        op.execute("DROP TRIGGER IF EXISTS consent_events_no_truncate ON consent_events")
        op.execute("DROP FUNCTION IF EXISTS consent_events_append_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS consent_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS consent_events_no_delete")


def downgrade() -> None:
    _drop_append_only_triggers()
    with op.batch_alter_table('tracking_events', schema=None) as batch_op:
        batch_op.drop_index('ix_tracking_occurred_at')
        batch_op.drop_index('ix_tracking_customer_kind')
        batch_op.drop_index('ix_tracking_campaign_kind')

    op.drop_table('tracking_events')
    with op.batch_alter_table('reward_codes', schema=None) as batch_op:
        batch_op.drop_index('ix_reward_codes_pool_free')

    op.drop_table('reward_codes')
    op.drop_table('csat_ratings')
    with op.batch_alter_table('consent_state', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_state_purpose')

    op.drop_table('consent_state')
    op.drop_table('consent_requests')
    op.drop_table('consent_evidence')
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bounces_email_hash'))

    op.drop_table('bounces')
    with op.batch_alter_table('shop_events', schema=None) as batch_op:
        batch_op.drop_index('ix_shop_events_customer')
        batch_op.drop_index('ix_shop_events_type_received')

    op.drop_table('shop_events')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_status_send_after')
        batch_op.drop_index('ix_deliveries_customer_sent')
        batch_op.drop_index('ix_deliveries_to_hash')
        batch_op.drop_index('ix_deliveries_cancel_group')
        batch_op.drop_index('ix_deliveries_campaign_status')

    op.drop_table('deliveries')
    with op.batch_alter_table('customer_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_tags_tag')

    op.drop_table('customer_tags')
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_events_subject_hash')
        batch_op.drop_index('ix_consent_events_occurred_at')
        batch_op.drop_index('ix_consent_events_customer_purpose')

    op.drop_table('consent_events')
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.drop_index('ix_suppressions_email_hash')

    op.drop_table('suppressions')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_total_spent')
        batch_op.drop_index('ix_customers_orders_count')
        batch_op.drop_index('ix_customers_last_order_at')
        batch_op.drop_index(batch_op.f('ix_customers_email_hash'))
        batch_op.drop_index('ix_customers_created_at')

    op.drop_table('customers')
    op.drop_table('idempotency_records')
    op.drop_table('campaigns')
    op.drop_table('api_keys')
