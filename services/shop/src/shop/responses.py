"""What the shop's JSON API answers: one response model per resource, built from the domain's values.

Money is an integer amount of minor units with its currency; times are UTC. Other services and
clients read these shapes, so a field changes only with its readers.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from shop.cart import CartLine
from shop.models import Campaign, Checkout, Merchant, MerchantStaff, Order, OrderLine, Product


class MoneyPublic(BaseModel):
    amount_minor: int
    currency: str


def money(amount_minor: int, currency: str) -> MoneyPublic:
    return MoneyPublic(amount_minor=amount_minor, currency=currency)


class ProductPublic(BaseModel):
    id: str
    merchant_id: str
    merchant_name: str | None
    title: str
    description: str
    price: MoneyPublic
    stock: int
    category: str
    image_url: str
    active: bool

    @classmethod
    def of(cls, p: Product, m: Merchant | None = None) -> ProductPublic:
        return cls(
            id=p.id,
            merchant_id=p.merchant_id,
            merchant_name=m.name if m else None,
            title=p.title,
            description=p.description,
            price=money(p.price_minor, p.currency),
            stock=p.stock,
            category=p.category,
            image_url=p.image_url,
            active=p.active,
        )


class CategoryPublic(BaseModel):
    category: str
    products: int


class MerchantPublic(BaseModel):
    id: str
    name: str
    description: str
    status: str
    applied_by: str
    verified_at: datetime | None
    verified_by: str | None

    @classmethod
    def of(cls, m: Merchant) -> MerchantPublic:
        return cls.model_validate(m, from_attributes=True)


class MyMerchantPublic(MerchantPublic):
    """A merchant the member works for, and as what (owner or staff)."""

    role: str


class StaffPublic(BaseModel):
    merchant_id: str
    member_id: str
    role: str

    @classmethod
    def of(cls, s: MerchantStaff) -> StaffPublic:
        return cls.model_validate(s, from_attributes=True)


class CampaignPublic(BaseModel):
    id: str
    name: str
    extra_bp: int
    product_id: str | None
    starts_at: datetime
    ends_at: datetime

    @classmethod
    def of(cls, c: Campaign) -> CampaignPublic:
        return cls.model_validate(c, from_attributes=True)


class CartLinePublic(BaseModel):
    product: ProductPublic
    quantity: int
    amount_minor: int


class CartPublic(BaseModel):
    items: list[CartLinePublic]

    @classmethod
    def of(cls, lines: list[CartLine]) -> CartPublic:
        return cls(
            items=[
                CartLinePublic(
                    product=ProductPublic.of(ln.product, ln.merchant),
                    quantity=ln.item.quantity,
                    amount_minor=ln.item.quantity * ln.product.price_minor,
                )
                for ln in lines
            ]
        )


class CheckoutPublic(BaseModel):
    id: str
    state: str
    order_id: str | None
    total: MoneyPublic
    points: int
    card_amount: MoneyPublic
    merchant_bonus_points: int

    @classmethod
    def of(cls, c: Checkout) -> CheckoutPublic:
        return cls(
            id=c.id,
            state=c.state,
            order_id=c.order_id if c.state == "completed" else None,
            total=money(c.total_minor, c.currency),
            points=c.points,
            card_amount=money(c.card_minor, c.currency),
            merchant_bonus_points=c.bonus_points,
        )


class OrderLinePublic(BaseModel):
    product_id: str
    title: str
    quantity: int
    unit_price: MoneyPublic


class OrderPublic(BaseModel):
    id: str
    member_id: str
    merchant_id: str
    status: str
    problem: str
    total: MoneyPublic
    points_used: int
    card_amount: MoneyPublic
    commission: MoneyPublic
    merchant_bonus_points: int
    # The campaign bonus is the merchant's cost (a point is worth one minor unit).
    campaign_cost: MoneyPublic
    merchant_payout: MoneyPublic
    ship_by: datetime | None
    tracking: str
    created_at: datetime
    updated_at: datetime
    refund_requested_at: datetime | None
    refund_reason: str
    lines: list[OrderLinePublic]

    @classmethod
    def of(cls, o: Order, lines: list[OrderLine]) -> OrderPublic:
        return cls(
            id=o.id,
            member_id=o.member_id,
            merchant_id=o.merchant_id,
            status=o.status,
            problem=o.problem,
            total=money(o.total_minor, o.currency),
            points_used=o.points_used,
            card_amount=money(o.card_minor, o.currency),
            commission=money(o.commission_minor, o.currency),
            merchant_bonus_points=o.bonus_points,
            campaign_cost=money(o.bonus_points, o.currency),
            merchant_payout=money(o.merchant_payout_minor, o.currency),
            ship_by=o.ship_by,
            tracking=o.tracking,
            created_at=o.created_at,
            updated_at=o.updated_at,
            refund_requested_at=o.refund_requested_at,
            refund_reason=o.refund_reason,
            lines=[
                OrderLinePublic(
                    product_id=ln.product_id,
                    title=ln.title,
                    quantity=ln.quantity,
                    unit_price=money(ln.unit_price_minor, o.currency),
                )
                for ln in lines
            ],
        )
