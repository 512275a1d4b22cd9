"""Orders, prediction fits, and the per-customer prediction figures (issue 21).

* ``orders``: the shop's orders (``order_placed`` events, ``mailer orders import``), with
  the total in the order's currency and in the shop's (MAILER_FX_RATES_FILE), and a status
  (placed / cancelled / refunded); unique per (customer, shop order id).
* ``prediction_fits``: every fit of the prediction models, with parameters and time.
* ``customers``: p_alive, expected orders in 90 / 365 days, predicted_clv,
  expected_next_order_at, churn_risk, predictions_at; indexed for segment conditions
  (predicted_spend_tier gets its index too).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_INDEXED = ('predicted_clv', 'p_alive', 'churn_risk', 'expected_next_order_at', 'predicted_spend_tier')


def upgrade() -> None:
    op.create_table(
        'orders',
        sa.Column('id', _ID, nullable=False),
        sa.Column('customer_id', _ID, nullable=False),
        sa.Column('shop_order_id', sa.String(length=200), nullable=False),
        sa.Column('placed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('total', sa.Numeric(precision=14, scale=2), nullable=True),
        sa.Column('currency', sa.String(length=3), nullable=True),
        sa.Column('total_shop', sa.Numeric(precision=14, scale=2), nullable=True),
        sa.Column('status', sa.Enum('placed', 'cancelled', 'refunded', name='orderstatus', native_enum=False,
                                    length=20), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('customer_id', 'shop_order_id', name='uq_orders_customer_shop_order'),
    )
    op.create_index('ix_orders_placed_at', 'orders', ['placed_at'], unique=False)
    op.create_table(
        'prediction_fits',
        sa.Column('id', _ID, nullable=False),
        sa.Column('fitted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('as_of', sa.Date(), nullable=False),
        sa.Column('trigger', sa.String(length=20), nullable=False),
        sa.Column('daily_key', sa.Date(), nullable=True),
        sa.Column('status', sa.String(length=30), nullable=False),
        sa.Column('customers', sa.Integer(), nullable=True),
        sa.Column('scored', sa.Integer(), nullable=True),
        sa.Column('log_likelihood', sa.Float(), nullable=True),
        sa.Column('params', sa.JSON(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('daily_key'),
    )
    op.create_index('ix_prediction_fits_fitted_at', 'prediction_fits', ['fitted_at'], unique=False)
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('p_alive', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('expected_orders_90d', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('expected_orders_365d', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('predicted_clv', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('expected_next_order_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('churn_risk', sa.Enum('low', 'medium', 'high', name='churnrisk',
                                                            native_enum=False, length=20), nullable=True))
        batch_op.add_column(sa.Column('predictions_at', sa.DateTime(timezone=True), nullable=True))
        for column in _INDEXED:
            batch_op.create_index(f'ix_customers_{column}', [column], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        for column in _INDEXED:
            batch_op.drop_index(f'ix_customers_{column}')
        for column in ('predictions_at', 'churn_risk', 'expected_next_order_at', 'predicted_clv',
                       'expected_orders_365d', 'expected_orders_90d', 'p_alive'):
            batch_op.drop_column(column)
    op.drop_index('ix_prediction_fits_fitted_at', table_name='prediction_fits')
    op.drop_table('prediction_fits')
    op.drop_index('ix_orders_placed_at', table_name='orders')
    op.drop_table('orders')
