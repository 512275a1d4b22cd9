"""Revenue attribution and campaign brakes (issue 20).

* ``attributions``: one row per attributed order (unique ``order_id``): the send
  (delivery, campaign or automation rule) that gets it, currency and amount, the basis
  (``click`` or ``open``), when, and the reversal of a cancelled or refunded order.
* ``campaign_actions``: every pause and resume of a campaign, by a person or a brake,
  with the figures the brake acted on.
* ``campaigns.brake`` / ``campaigns.brake_detail``: the brake that paused a campaign now.
* ``ix_tracking_campaign_kind_delivery``: a covering index for campaign reports (unique
  opens and clicks, the chart), so a 200,000-recipient report renders in under a second.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'attributions',
        sa.Column('id', _ID, nullable=False),
        sa.Column('order_id', _ID, nullable=False),
        sa.Column('customer_id', _ID, nullable=False),
        sa.Column('delivery_id', _ID, nullable=False),
        sa.Column('campaign_id', _ID, nullable=True),
        sa.Column('automation', sa.String(length=100), nullable=True),
        sa.Column('currency', sa.String(length=3), nullable=False),
        sa.Column('amount', sa.Numeric(precision=14, scale=2), nullable=True),
        sa.Column('basis', sa.String(length=10), nullable=False),
        sa.Column('touched_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('placed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('attributed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reversed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('reversal', sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('order_id'),
    )
    op.create_index('ix_attributions_campaign', 'attributions', ['campaign_id', 'reversed_at'], unique=False)
    op.create_index('ix_attributions_automation', 'attributions', ['automation', 'reversed_at'], unique=False)
    op.create_index('ix_attributions_delivery', 'attributions', ['delivery_id'], unique=False)
    op.create_table(
        'campaign_actions',
        sa.Column('id', _ID, nullable=False),
        sa.Column('campaign_id', _ID, nullable=False),
        sa.Column('action', sa.String(length=20), nullable=False),
        sa.Column('actor', sa.String(length=100), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_campaign_actions_campaign', 'campaign_actions', ['campaign_id', 'occurred_at'],
                    unique=False)
    op.create_index('ix_tracking_campaign_kind_delivery', 'tracking_events',
                    ['campaign_id', 'kind', 'delivery_id', 'occurred_at'], unique=False)
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('brake', sa.String(length=30), nullable=True))
        batch_op.add_column(sa.Column('brake_detail', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_column('brake_detail')
        batch_op.drop_column('brake')
    op.drop_index('ix_tracking_campaign_kind_delivery', table_name='tracking_events')
    op.drop_index('ix_campaign_actions_campaign', table_name='campaign_actions')
    op.drop_table('campaign_actions')
    op.drop_index('ix_attributions_delivery', table_name='attributions')
    op.drop_index('ix_attributions_automation', table_name='attributions')
    op.drop_index('ix_attributions_campaign', table_name='attributions')
    op.drop_table('attributions')
