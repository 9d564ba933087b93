"""points: merchant-funded campaign points on pending earnings.

Revision ID: points_0003
Revises: points_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "points_0003"
down_revision = "points_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("points_pending_earn") as batch:
        batch.add_column(sa.Column("merchant_bonus", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("points_pending_earn") as batch:
        batch.drop_column("merchant_bonus")
