"""points: cumulative refunds of a pending earning, and how much of each lot expired.

A purchase refunded several times takes back, in all, what the refunded money earned; that needs
the points the purchase earned at first, the money refunded so far and the points taken back so
far. A clawback takes back only points the member still benefits from, so each lot counts the
points of it that expired.

Revision ID: points_0005
Revises: points_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "points_0005"
down_revision = "points_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("points_pending_earn") as batch:
        batch.add_column(sa.Column("earned", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("refunded_minor", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("taken_back", sa.BigInteger(), nullable=False, server_default="0"))
    # What the earnings recorded so far stand for (refunds before this revision are not known).
    op.execute("UPDATE points_pending_earn SET earned = regular + bonus + merchant_bonus")
    with op.batch_alter_table("points_lot") as batch:
        batch.add_column(sa.Column("expired", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("points_lot") as batch:
        batch.drop_column("expired")
    with op.batch_alter_table("points_pending_earn") as batch:
        batch.drop_column("taken_back")
        batch.drop_column("refunded_minor")
        batch.drop_column("earned")
