"""Raw bounce/complaint copies (bounce_reports, kept MAILER_BOUNCE_RETENTION_DAYS) and ESP webhook dedupe (webhook_events).


Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 00:00:00
"""
import sqlalchemy as sa
from alembic import op

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_reports",
        sa.Column("id", BigId, primary_key=True, nullable=False),
        sa.Column("delivery_id", BigId, sa.ForeignKey("deliveries.id"), nullable=True),
        sa.Column("email_hash", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    )
    op.create_index("ix_bounce_reports_email_hash", "bounce_reports", ["email_hash"])
    op.create_index("ix_bounce_reports_received_at", "bounce_reports", ["received_at"])
    op.create_table(
        "webhook_events",
        sa.Column("id", BigId, primary_key=True, nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
        sa.UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event"),
    )


def downgrade() -> None:
    op.drop_table("webhook_events")
    op.drop_index("ix_bounce_reports_received_at", table_name="bounce_reports")
    op.drop_index("ix_bounce_reports_email_hash", table_name="bounce_reports")
    op.drop_table("bounce_reports")
