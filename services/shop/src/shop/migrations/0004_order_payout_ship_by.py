"""shop: the merchant's payout on each order, its ship-by deadline, why an order ended unplanned, and
the halves of a refund as they are made.

Revision ID: shop_0004
Revises: shop_0003
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "shop_0004"
down_revision = "shop_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shop_order") as batch:
        batch.add_column(sa.Column("merchant_payout_minor", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("ship_by", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("problem", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("points_refunded", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("card_refunded_minor", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("refund_attempt", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_shop_order_ship_by", ["ship_by"])
    # Orders placed before get the same rule (their bonus was granted, so the merchant owes it) and no
    # ship-by deadline.
    op.execute("UPDATE shop_order SET merchant_payout_minor = total_minor - commission_minor - bonus_points")


def downgrade() -> None:
    with op.batch_alter_table("shop_order") as batch:
        batch.drop_index("ix_shop_order_ship_by")
        batch.drop_column("refund_attempt")
        batch.drop_column("card_refunded_minor")
        batch.drop_column("points_refunded")
        batch.drop_column("problem")
        batch.drop_column("ship_by")
        batch.drop_column("merchant_payout_minor")
