"""The shop's tables: merchants and their staff, products, campaigns, carts, checkouts, orders."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kizuna.kit.db import UTCDateTime
from sqlalchemy import JSON, Column, Index, String, UniqueConstraint
from sqlmodel import Field, SQLModel
from ulid import ULID


def new_id(prefix: str) -> str:
    """A sortable unique id with a type prefix, e.g. `ord_01J...`."""
    return f"{prefix}_{ULID()}"


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime, nullable=nullable, index=index))


class Merchant(SQLModel, table=True):
    """A seller. `pending` after applying, `active` once a platform admin verified it."""

    __tablename__ = "shop_merchant"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    description: str = ""
    status: str = Field(max_length=20, index=True)  # pending | active | suspended | rejected
    applied_by: str = Field(max_length=100)
    created_at: datetime = _ts()
    verified_at: datetime | None = _ts(nullable=True)
    verified_by: str | None = Field(default=None, max_length=100)


class MerchantStaff(SQLModel, table=True):
    """A member who works for a merchant (identified by their Kizuna member ID)."""

    __tablename__ = "shop_merchant_staff"

    merchant_id: str = Field(primary_key=True, foreign_key="shop_merchant.id", max_length=40)
    member_id: str = Field(primary_key=True, max_length=100, index=True)
    role: str = Field(max_length=20)  # owner | staff


class Product(SQLModel, table=True):
    __tablename__ = "shop_product"

    id: str = Field(primary_key=True, max_length=40)
    merchant_id: str = Field(foreign_key="shop_merchant.id", max_length=40, index=True)
    title: str = Field(max_length=200)
    description: str = ""
    price_minor: int
    currency: str = Field(max_length=3)
    stock: int
    category: str = Field(max_length=60, index=True)
    image_url: str = ""
    active: bool = True
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Campaign(SQLModel, table=True):
    """Extra points a merchant funds on its products (all of them, or one) for a period."""

    __tablename__ = "shop_campaign"

    id: str = Field(primary_key=True, max_length=40)
    merchant_id: str = Field(foreign_key="shop_merchant.id", max_length=40, index=True)
    product_id: str | None = Field(default=None, max_length=40)
    name: str = Field(max_length=200)
    extra_bp: int  # basis points of the line amount, 100 = 1 extra point per 100
    starts_at: datetime = _ts()
    ends_at: datetime = _ts()
    created_at: datetime = _ts()


class CartItem(SQLModel, table=True):
    __tablename__ = "shop_cart_item"

    member_id: str = Field(primary_key=True, max_length=100)
    product_id: str = Field(primary_key=True, foreign_key="shop_product.id", max_length=40)
    quantity: int
    added_at: datetime = _ts()


class Checkout(SQLModel, table=True):
    """The persisted state of one checkout saga, so that a crash mid-way can be finished or undone.

    state: started -> points_reserved -> card_authorized -> completed, or -> compensating -> failed.
    """

    __tablename__ = "shop_checkout"
    __table_args__ = (UniqueConstraint("member_id", "idempotency_key", name="uq_shop_checkout_key"),)

    id: str = Field(primary_key=True, max_length=40)
    member_id: str = Field(max_length=100, index=True)
    merchant_id: str = Field(max_length=40)
    idempotency_key: str = Field(max_length=200)
    request_fingerprint: str = Field(max_length=64)
    order_id: str = Field(max_length=40)
    state: str = Field(max_length=20, index=True)
    lines: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    total_minor: int
    currency: str = Field(max_length=3)
    points: int
    card_minor: int
    commission_minor: int
    bonus_points: int
    reservation_id: str | None = Field(default=None, max_length=100)
    authorization_id: str | None = Field(default=None, max_length=100)
    error_code: str | None = Field(default=None, max_length=40)
    error_message: str | None = None
    created_at: datetime = _ts()
    updated_at: datetime = _ts(index=True)


class Order(SQLModel, table=True):
    __tablename__ = "shop_order"
    __table_args__ = (Index("ix_shop_order_member_created", "member_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    checkout_id: str = Field(sa_column=Column(String(40), unique=True, nullable=False))
    member_id: str = Field(max_length=100)
    merchant_id: str = Field(max_length=40, index=True)
    # paid | shipping | shipped | completed | cancelling | cancelled | refunding | refunded | refund_failed
    status: str = Field(max_length=20, index=True)
    total_minor: int
    currency: str = Field(max_length=3)
    points_used: int
    card_minor: int
    commission_minor: int
    bonus_points: int
    # What the merchant is owed: total - commission - the value of the campaign bonus it funds.
    merchant_payout_minor: int = 0
    reservation_id: str | None = Field(default=None, max_length=100)
    authorization_id: str | None = Field(default=None, max_length=100)
    points_capture_entry_id: str | None = Field(default=None, max_length=100)
    card_capture_id: str | None = Field(default=None, max_length=100)
    # A refund's two halves, each recorded as made (None: not yet), so that a retry refunds only the rest.
    points_refunded: int | None = None
    card_refunded_minor: int | None = None
    # Peers remember a refused idempotency key, so each retry after a refused refund needs new keys.
    refund_attempt: int = 0
    tracking: str = ""
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    shipped_at: datetime | None = _ts(nullable=True, index=True)
    # Unshipped by then, the order is cancelled (its holds would lapse soon after).
    ship_by: datetime | None = _ts(nullable=True, index=True)
    # Why the order ended where it did when that was not the merchant's or member's choice
    # (not shipped in time, a hold that could not be captured, a refund a peer refused).
    problem: str = ""
    # The member asked for a refund (after shipment); the merchant or an admin decides.
    refund_requested_at: datetime | None = _ts(nullable=True)
    refund_reason: str = ""


class OrderLine(SQLModel, table=True):
    __tablename__ = "shop_order_line"

    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(foreign_key="shop_order.id", max_length=40, index=True)
    product_id: str = Field(max_length=40)
    title: str = Field(max_length=200)
    quantity: int
    unit_price_minor: int
