"""Indexes for the console's customer search (issue 16): e-mail and name prefixes.

* The unique index on ``customers.email`` (normalized, lower-case) already serves an
  e-mail prefix as a range (``email >= 'ab' AND email < 'ac'``), on SQLite and PostgreSQL.
* Names get expression indexes on ``lower(first_name)`` and ``lower(last_name)``, which
  serve a name prefix as the same kind of range.

pg_trgm is not used: prefix search is what the console offers, and these indexes need
no extension.  See mailer/compliance/search.py for the queries they serve.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 00:00:00
"""
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None



def upgrade() -> None:
    op.execute('CREATE INDEX ix_customers_first_name_lower ON customers (lower(first_name))')
    op.execute('CREATE INDEX ix_customers_last_name_lower ON customers (lower(last_name))')


def downgrade() -> None:
    op.execute('DROP INDEX ix_customers_last_name_lower')
    op.execute('DROP INDEX ix_customers_first_name_lower')
