"""Prediction triggers: what each customer's prediction automations last saw (issue 21).

* ``prediction_triggers``: one row per (customer, trigger). For ``churn_risk_became``
  the churn risk the last processed score gave and how many crossings were raised; for
  ``expected_order_due`` the purchase cycle (the day of the last order), its frozen
  expected next order, and when its event was raised. The automations compare the
  customers' current figures with these rows, so every crossing is raised once, and a
  rerun (or a crash before the row was written) raises nothing twice.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 14:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'prediction_triggers',
        sa.Column('customer_id', _ID, nullable=False),
        sa.Column('trigger', sa.String(length=40), nullable=False),
        sa.Column('value', sa.String(length=40), nullable=False),
        sa.Column('changes', sa.Integer(), nullable=False),
        sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('fired_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('customer_id', 'trigger'),
    )


def downgrade() -> None:
    op.drop_table('prediction_triggers')
