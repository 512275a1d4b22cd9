"""Campaign preheaders per locale (issue 16, the console's campaign form).

* ``campaigns.preheaders``: the preheader per locale ({"en": "...", "pl": "..."}), the
  same shape as ``subjects``; empty means the template's own preheaders. Existing
  campaigns get ``{}`` (server default), so they render exactly as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('campaigns') as batch:
        batch.add_column(sa.Column('preheaders', sa.JSON(), nullable=False, server_default='{}'))


def downgrade() -> None:
    with op.batch_alter_table('campaigns') as batch:
        batch.drop_column('preheaders')
