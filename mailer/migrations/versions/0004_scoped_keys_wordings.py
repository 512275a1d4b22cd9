"""Scoped API keys (api_keys.scopes, api_keys.last_used_at) and the wordings table.

Existing keys keep what they could do before: ``notices,events``.  ``wordings`` holds
every version of every consent wording mailer has seen, with the SHA-256 of its exact
text, so the words behind any grant can be shown.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scopes', sa.String(length=200), server_default='notices,events',
                                      nullable=False))
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('wordings',
                    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
                    sa.Column('wording_id', sa.String(length=100), nullable=False),
                    sa.Column('locale', sa.String(length=20), nullable=False),
                    sa.Column('version', sa.String(length=50), nullable=False),
                    sa.Column('sha256', sa.String(length=64), nullable=False),
                    sa.Column('text', sa.Text(), nullable=False),
                    sa.Column('registered_at', sa.DateTime(timezone=True),
                              server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
                    sa.PrimaryKeyConstraint('id'),
                    sa.UniqueConstraint('wording_id', 'locale', 'version', name='uq_wordings_id_locale_version'))


def downgrade() -> None:
    op.drop_table('wordings')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('scopes')
