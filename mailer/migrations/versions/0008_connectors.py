"""Shop connectors (issue 17): Shopify and WooCommerce webhooks in, consent written back.

* ``connector_shops``: a connected shop, its webhook secret and write-back credentials.
* ``connector_webhooks``: every delivery under its webhook id (unique: each takes effect once).
* ``shop_customers``: which shop a customer came from, with the shop's id for them.
* ``connector_items`` / ``connector_orders``: stock and ETAs last told (restocks, delays).
* ``connector_outbox``: consent changes to write back, one per consent event and shop.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'connector_shops',
        sa.Column('id', _ID, nullable=False),
        sa.Column('platform', sa.String(length=20), nullable=False),
        sa.Column('shop', sa.String(length=255), nullable=False),
        sa.Column('secret', sa.Text(), nullable=True),
        sa.Column('api_url', sa.String(length=2000), nullable=True),
        sa.Column('api_token', sa.Text(), nullable=True),
        sa.Column('writeback_cursor', sa.BigInteger(), nullable=False),
        sa.Column('created_at', _TS, nullable=False),
        sa.Column('updated_at', _TS, nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('platform', 'shop', name='uq_connector_shops_platform_shop'),
    )
    op.create_table(
        'connector_webhooks',
        sa.Column('id', _ID, nullable=False),
        sa.Column('platform', sa.String(length=20), nullable=False),
        sa.Column('shop', sa.String(length=255), nullable=False),
        sa.Column('webhook_id', sa.String(length=200), nullable=False),
        sa.Column('topic', sa.String(length=100), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('duplicates', sa.Integer(), nullable=False),
        sa.Column('body', sa.Text(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('lease_until', _TS, nullable=True),
        sa.Column('received_at', _TS, nullable=False),
        sa.Column('processed_at', _TS, nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('platform', 'shop', 'webhook_id', name='uq_connector_webhooks_delivery'),
    )
    op.create_index('ix_connector_webhooks_status', 'connector_webhooks', ['status', 'received_at'])
    op.create_index('ix_connector_webhooks_shop_topic', 'connector_webhooks',
                    ['platform', 'shop', 'topic', 'received_at'])
    op.create_table(
        'shop_customers',
        sa.Column('platform', sa.String(length=20), nullable=False),
        sa.Column('shop', sa.String(length=255), nullable=False),
        sa.Column('customer_id', _ID, nullable=False),
        sa.Column('remote_id', sa.String(length=100), nullable=True),
        sa.Column('updated_at', _TS, nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('platform', 'shop', 'customer_id'),
    )
    op.create_index('ix_shop_customers_customer', 'shop_customers', ['customer_id'])
    op.create_table(
        'connector_items',
        sa.Column('platform', sa.String(length=20), nullable=False),
        sa.Column('shop', sa.String(length=255), nullable=False),
        sa.Column('item_key', sa.String(length=100), nullable=False),
        sa.Column('sku', sa.String(length=100), nullable=True),
        sa.Column('name', sa.String(length=200), nullable=True),
        sa.Column('price', sa.String(length=40), nullable=True),
        sa.Column('url', sa.String(length=2000), nullable=True),
        sa.Column('image_url', sa.String(length=2000), nullable=True),
        sa.Column('available', sa.Integer(), nullable=True),
        sa.Column('levels', sa.JSON(), nullable=False),
        sa.Column('updated_at', _TS, nullable=False),
        sa.PrimaryKeyConstraint('platform', 'shop', 'item_key'),
    )
    op.create_table(
        'connector_orders',
        sa.Column('platform', sa.String(length=20), nullable=False),
        sa.Column('shop', sa.String(length=255), nullable=False),
        sa.Column('order_id', sa.String(length=100), nullable=False),
        sa.Column('order_number', sa.String(length=100), nullable=False),
        sa.Column('customer_id', _ID, nullable=True),
        sa.Column('last_eta', sa.String(length=40), nullable=True),
        sa.Column('updated_at', _TS, nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('platform', 'shop', 'order_id'),
    )
    op.create_table(
        'connector_outbox',
        sa.Column('id', _ID, nullable=False),
        sa.Column('consent_event_id', _ID, nullable=False),
        sa.Column('platform', sa.String(length=20), nullable=False),
        sa.Column('shop', sa.String(length=255), nullable=False),
        sa.Column('remote_id', sa.String(length=100), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('occurred_at', _TS, nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', _TS, nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('sent_at', _TS, nullable=True),
        sa.Column('created_at', _TS, nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('consent_event_id', 'platform', 'shop', name='uq_connector_outbox_event_shop'),
    )
    op.create_index('ix_connector_outbox_due', 'connector_outbox', ['status', 'next_attempt_at'])


def downgrade() -> None:
    op.drop_index('ix_connector_outbox_due', table_name='connector_outbox')
    op.drop_table('connector_outbox')
    op.drop_table('connector_orders')
    op.drop_table('connector_items')
    op.drop_index('ix_shop_customers_customer', table_name='shop_customers')
    op.drop_table('shop_customers')
    op.drop_index('ix_connector_webhooks_shop_topic', table_name='connector_webhooks')
    op.drop_index('ix_connector_webhooks_status', table_name='connector_webhooks')
    op.drop_table('connector_webhooks')
    op.drop_table('connector_shops')
