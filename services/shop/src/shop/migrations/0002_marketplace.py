"""shop: merchants, products, campaigns, carts, checkouts (saga state), orders.

Revision ID: shop_0002
Revises: shop_0001
"""

import sqlalchemy as sa
from alembic import op
from kizuna.kit.db import UTCDateTime

revision = "shop_0002"
down_revision = "shop_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shop_merchant",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("applied_by", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("verified_at", UTCDateTime(), nullable=True),
        sa.Column("verified_by", sa.String(100), nullable=True),
    )
    op.create_table(
        "shop_merchant_staff",
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("shop_merchant.id"), primary_key=True),
        sa.Column("member_id", sa.String(100), primary_key=True, index=True),
        sa.Column("role", sa.String(20), nullable=False),
    )
    op.create_table(
        "shop_product",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("shop_merchant.id"), nullable=False, index=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("price_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("stock", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(60), nullable=False, index=True),
        sa.Column("image_url", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("stock >= 0", name="ck_shop_product_stock"),
        sa.CheckConstraint("price_minor > 0", name="ck_shop_product_price"),
    )
    op.create_table(
        "shop_campaign",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("shop_merchant.id"), nullable=False, index=True),
        sa.Column("product_id", sa.String(40), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("extra_bp", sa.Integer(), nullable=False),
        sa.Column("starts_at", UTCDateTime(), nullable=False),
        sa.Column("ends_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "shop_cart_item",
        sa.Column("member_id", sa.String(100), primary_key=True),
        sa.Column("product_id", sa.String(40), sa.ForeignKey("shop_product.id"), primary_key=True),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "shop_checkout",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("member_id", sa.String(100), nullable=False, index=True),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("request_fingerprint", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(40), nullable=False),
        sa.Column("state", sa.String(20), nullable=False, index=True),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("card_minor", sa.BigInteger(), nullable=False),
        sa.Column("commission_minor", sa.BigInteger(), nullable=False),
        sa.Column("bonus_points", sa.BigInteger(), nullable=False),
        sa.Column("reservation_id", sa.String(100), nullable=True),
        sa.Column("authorization_id", sa.String(100), nullable=True),
        sa.Column("error_code", sa.String(40), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False, index=True),
        sa.UniqueConstraint("member_id", "idempotency_key", name="uq_shop_checkout_key"),
    )
    op.create_table(
        "shop_order",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("checkout_id", sa.String(40), nullable=False, unique=True),
        sa.Column("member_id", sa.String(100), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=False, index=True),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("points_used", sa.BigInteger(), nullable=False),
        sa.Column("card_minor", sa.BigInteger(), nullable=False),
        sa.Column("commission_minor", sa.BigInteger(), nullable=False),
        sa.Column("bonus_points", sa.BigInteger(), nullable=False),
        sa.Column("reservation_id", sa.String(100), nullable=True),
        sa.Column("authorization_id", sa.String(100), nullable=True),
        sa.Column("points_capture_entry_id", sa.String(100), nullable=True),
        sa.Column("card_capture_id", sa.String(100), nullable=True),
        sa.Column("tracking", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("shipped_at", UTCDateTime(), nullable=True, index=True),
    )
    op.create_index("ix_shop_order_member_created", "shop_order", ["member_id", "created_at"])
    op.create_table(
        "shop_order_line",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.String(40), sa.ForeignKey("shop_order.id"), nullable=False, index=True),
        sa.Column("product_id", sa.String(40), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "shop_order_line",
        "shop_order",
        "shop_checkout",
        "shop_cart_item",
        "shop_campaign",
        "shop_product",
        "shop_merchant_staff",
        "shop_merchant",
    ):
        op.drop_table(table)
