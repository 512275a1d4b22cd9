"""A/B tests: campaign variants, the test's settings and decision, the variant of each delivery.

* ``campaigns.variants``: the variants (subject, preheader or template per locale), JSON.
* ``ab_tests``: one row per tested campaign: test share, winning metric, wait, confidence,
  state (testing / waiting / decided), when the test ends, the winner and the decision.
* ``deliveries.variant``: the variant label a mail was sent with ("A".."D"), or "holdout"
  for an automation send deliberately not mailed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('campaigns') as batch:
        batch.add_column(sa.Column('variants', sa.JSON(), nullable=True))
    with op.batch_alter_table('deliveries') as batch:
        batch.add_column(sa.Column('variant', sa.String(length=10), nullable=True))
    op.create_table(
        'ab_tests',
        sa.Column('campaign_id', _ID, nullable=False),
        sa.Column('test_share_percent', sa.Float(), nullable=False),
        sa.Column('winner_metric', sa.String(length=10), nullable=False),
        sa.Column('wait_s', sa.Integer(), nullable=False),
        sa.Column('confidence', sa.Float(), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('test_ends_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('winner', sa.String(length=10), nullable=True),
        sa.Column('decision', sa.JSON(), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('campaign_id'),
    )
    op.create_index('ix_ab_tests_state_ends', 'ab_tests', ['state', 'test_ends_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_ab_tests_state_ends', table_name='ab_tests')
    op.drop_table('ab_tests')
    with op.batch_alter_table('deliveries') as batch:
        batch.drop_column('variant')
    with op.batch_alter_table('campaigns') as batch:
        batch.drop_column('variants')
