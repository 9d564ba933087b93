"""points: the earning contract's purchase facts, refunds by reference, daily credit budgets.

A purchase's events may arrive in any order: its row records what was seen (completed,
cancelled) and each refund by its own reference, so the ledger can be brought to what the facts
call for. Each service's credits per UTC day are counted for the daily budget.

Revision ID: points_0006
Revises: points_0005
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "points_0006"
down_revision = "points_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("points_pending_earn") as batch:
        batch.add_column(sa.Column("completed", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("cancelled", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("label", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("category", sa.String(60), nullable=False, server_default=""))
    # Earnings recorded before this revision: granted ones completed, cancelled ones cancelled.
    op.execute("UPDATE points_pending_earn SET completed = (status = 'granted'), cancelled = (status = 'cancelled')")
    op.create_table(
        "points_purchase_refund",
        sa.Column("source_service", sa.String(100), primary_key=True),
        sa.Column("source_ref", sa.String(200), primary_key=True),
        sa.Column("refund_ref", sa.String(200), primary_key=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "points_daily_credit",
        sa.Column("service", sa.String(100), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("points_daily_credit")
    op.drop_table("points_purchase_refund")
    with op.batch_alter_table("points_pending_earn") as batch:
        batch.drop_column("category")
        batch.drop_column("label")
        batch.drop_column("cancelled")
        batch.drop_column("completed")
