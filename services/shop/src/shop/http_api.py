"""The shop's JSON API (bearer member tokens): storefront, cart, checkout, orders, merchant console, admin."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from kizuna.kit.auth import Principal, member_scope
from kizuna.kit.bounds import NonNegInt64, PositiveInt64
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import PermissionDenied
from pydantic import BaseModel, Field

from shop import cart, catalogue, orders
from shop.catalogue import ProductDraft, Sort
from shop.models import Checkout, Merchant, Order, Product
from shop.wiring import Shop, shop_of

router = APIRouter(prefix="/api")
# Every member route names its scope: reads need shop:read; the cart, checkout and order changes
# need shop:order (a third-party app the member allowed less is refused with 403
# insufficient_scope).
Reader = Annotated[Principal, Depends(member_scope("shop:read"))]
Orderer = Annotated[Principal, Depends(member_scope("shop:order"))]
# The merchant console (a member's own shop: products, campaigns, staff, orders to ship) needs
# shop:sell, which an app the member lets place orders does not get with shop:order.
Seller = Annotated[Principal, Depends(member_scope("shop:sell"))]


def _shop(request: Request) -> Shop:
    return shop_of(request.app.state.runtime)


def is_admin(shop: Shop, principal: Principal) -> bool:
    return principal.has_scope("shop:admin") or principal.subject in shop.settings.shop_admins


def _require_admin(shop: Shop, principal: Principal) -> str:
    if not is_admin(shop, principal):
        raise PermissionDenied("only a platform admin may do this")
    return principal.subject


# ---- what the API returns ----------------------------------------------------------------------


def product_public(p: Product, m: Merchant | None = None) -> dict[str, Any]:
    return {
        "id": p.id,
        "merchant_id": p.merchant_id,
        "merchant_name": m.name if m else None,
        "title": p.title,
        "description": p.description,
        "price": {"amount_minor": p.price_minor, "currency": p.currency},
        "stock": p.stock,
        "category": p.category,
        "image_url": p.image_url,
        "active": p.active,
    }


def merchant_public(m: Merchant) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "description": m.description,
        "status": m.status,
        "applied_by": m.applied_by,
        "verified_at": m.verified_at,
        "verified_by": m.verified_by,
    }


async def order_public(session: SessionDep, o: Order) -> dict[str, Any]:
    money = lambda minor: {"amount_minor": minor, "currency": o.currency}  # noqa: E731
    return {
        "id": o.id,
        "member_id": o.member_id,
        "merchant_id": o.merchant_id,
        "status": o.status,
        "problem": o.problem,
        "total": money(o.total_minor),
        "points_used": o.points_used,
        "card_amount": money(o.card_minor),
        "commission": money(o.commission_minor),
        "merchant_bonus_points": o.bonus_points,
        # The campaign bonus is the merchant's cost (a point is worth one minor unit).
        "campaign_cost": money(o.bonus_points),
        "merchant_payout": money(o.merchant_payout_minor),
        "ship_by": o.ship_by,
        "tracking": o.tracking,
        "created_at": o.created_at,
        "updated_at": o.updated_at,
        "refund_requested_at": o.refund_requested_at,
        "refund_reason": o.refund_reason,
        "lines": [
            {
                "product_id": ln.product_id,
                "title": ln.title,
                "quantity": ln.quantity,
                "unit_price": money(ln.unit_price_minor),
            }
            for ln in await orders.order_lines(session, o.id)
        ],
    }


def checkout_public(c: Checkout) -> dict[str, Any]:
    return {
        "id": c.id,
        "state": c.state,
        "order_id": c.order_id if c.state == "completed" else None,
        "total": {"amount_minor": c.total_minor, "currency": c.currency},
        "points": c.points,
        "card_amount": {"amount_minor": c.card_minor, "currency": c.currency},
        "merchant_bonus_points": c.bonus_points,
    }


# ---- storefront --------------------------------------------------------------------------------


@router.get("/products")
async def list_products(
    session: SessionDep,
    category: str | None = None,
    q: str | None = None,
    sort: Sort = "newest",
    limit: PositiveInt64 = 50,
    offset: NonNegInt64 = 0,
) -> list[dict[str, Any]]:
    found = await catalogue.browse(session, category=category, text=q, sort=sort, limit=limit, offset=offset)
    return [product_public(p, m) for p, m in found]


@router.get("/products/{product_id}")
async def get_product(product_id: str, session: SessionDep) -> dict[str, Any]:
    return product_public(*await catalogue.product_page(session, product_id))


@router.get("/categories")
async def list_categories(session: SessionDep) -> list[dict[str, Any]]:
    return [{"category": c, "products": n} for c, n in await catalogue.categories(session)]


# ---- cart and checkout -----------------------------------------------------------------------------


class CartItemIn(BaseModel):
    product_id: str
    quantity: int


@router.get("/cart")
async def get_cart(member: Reader, session: SessionDep) -> dict[str, Any]:
    lines = await cart.lines(session, member.subject)
    return {
        "items": [
            {
                "product": product_public(ln.product, ln.merchant),
                "quantity": ln.item.quantity,
                "amount_minor": ln.item.quantity * ln.product.price_minor,
            }
            for ln in lines
        ]
    }


@router.put("/cart/items")
async def put_cart_item(body: CartItemIn, member: Orderer, session: SessionDep, request: Request) -> dict[str, Any]:
    await cart.set_quantity(session, member.subject, body.product_id, body.quantity, _shop(request).clock.now())
    await session.commit()
    return await get_cart(member, session)


@router.delete("/cart/items/{product_id}")
async def delete_cart_item(product_id: str, member: Orderer, session: SessionDep) -> dict[str, Any]:
    await cart.remove(session, member.subject, product_id)
    await session.commit()
    return await get_cart(member, session)


class CheckoutIn(BaseModel):
    idempotency_key: str
    points: int = 0
    merchant_id: str | None = None


@router.post("/checkout")
async def post_checkout(body: CheckoutIn, member: Orderer, request: Request) -> dict[str, Any]:
    done = await _shop(request).checkout.checkout(
        member_id=member.subject,
        member_token=member.token,
        merchant_id=body.merchant_id,
        points=body.points,
        idempotency_key=body.idempotency_key,
    )
    return checkout_public(done)


# ---- my orders ---------------------------------------------------------------------------------


async def _my_order(session: SessionDep, order_id: str, member: Principal) -> Order:
    order = await orders.get_order(session, order_id)
    if order.member_id != member.subject:
        raise PermissionDenied("this order belongs to another member")
    return order


@router.get("/orders")
async def my_orders(member: Reader, session: SessionDep) -> list[dict[str, Any]]:
    return [await order_public(session, o) for o in await orders.member_orders(session, member.subject)]


@router.get("/orders/{order_id}")
async def my_order(order_id: str, member: Reader, session: SessionDep) -> dict[str, Any]:
    return await order_public(session, await _my_order(session, order_id, member))


@router.post("/orders/{order_id}/cancel")
async def cancel_my_order(order_id: str, member: Orderer, session: SessionDep, request: Request) -> dict[str, Any]:
    await _my_order(session, order_id, member)
    await session.close()
    return await order_public(session, await _shop(request).orders.cancel(order_id))


@router.post("/orders/{order_id}/confirm-delivery")
async def confirm_delivery(order_id: str, member: Orderer, session: SessionDep, request: Request) -> dict[str, Any]:
    order = await _shop(request).orders.complete(order_id, member.subject)
    return await order_public(session, order)


class RefundRequestIn(BaseModel):
    reason: str


@router.post("/orders/{order_id}/refund-request")
async def refund_request(
    order_id: str, body: RefundRequestIn, member: Orderer, session: SessionDep, request: Request
) -> dict[str, Any]:
    order = await orders.request_refund(session, order_id, member.subject, body.reason, _shop(request).clock.now())
    await session.commit()
    return await order_public(session, order)


# ---- merchant console ----------------------------------------------------------------------------


class MerchantApplication(BaseModel):
    name: str
    description: str = ""


class ProductIn(BaseModel):
    title: str
    description: str = ""
    price_minor: int
    currency: str = "JPY"
    stock: int
    category: str
    image_url: str = ""
    active: bool = True

    def draft(self) -> ProductDraft:
        return ProductDraft(
            self.title, self.description, self.price_minor, self.currency, self.stock, self.category, self.image_url
        )


class CampaignIn(BaseModel):
    name: str
    extra_bp: int = Field(description="extra points in basis points of the line amount (100 = 1%)")
    starts_at: datetime
    ends_at: datetime
    product_id: str | None = None


class StaffIn(BaseModel):
    member_id: str


class ShipIn(BaseModel):
    tracking: str = ""


@router.post("/merchants")
async def apply_as_merchant(
    body: MerchantApplication, member: Seller, session: SessionDep, request: Request
) -> dict[str, Any]:
    merchant = await catalogue.apply(session, member.subject, body.name, body.description, _shop(request).clock.now())
    await session.commit()
    return merchant_public(merchant)


@router.get("/merchants/mine")
async def my_merchants(member: Seller, session: SessionDep) -> list[dict[str, Any]]:
    return [{**merchant_public(m), "role": role} for m, role in await catalogue.merchants_of(session, member.subject)]


@router.post("/merchants/{merchant_id}/staff")
async def add_staff(merchant_id: str, body: StaffIn, member: Seller, session: SessionDep) -> dict[str, str]:
    await catalogue.require_staff(session, merchant_id, member.subject, owner=True)
    staff = await catalogue.add_staff(session, merchant_id, body.member_id)
    await session.commit()
    return {"merchant_id": merchant_id, "member_id": staff.member_id, "role": staff.role}


@router.get("/merchants/{merchant_id}/products")
async def merchant_products(merchant_id: str, member: Seller, session: SessionDep) -> list[dict[str, Any]]:
    await catalogue.require_staff(session, merchant_id, member.subject)
    return [product_public(p) for p in await catalogue.merchant_products(session, merchant_id)]


@router.post("/merchants/{merchant_id}/products")
async def add_product(
    merchant_id: str, body: ProductIn, member: Seller, session: SessionDep, request: Request
) -> dict[str, Any]:
    merchant = await catalogue.require_staff(session, merchant_id, member.subject)
    product = await catalogue.add_product(session, merchant, body.draft(), _shop(request).clock.now())
    await session.commit()
    return product_public(product)


@router.put("/merchants/{merchant_id}/products/{product_id}")
async def update_product(
    merchant_id: str, product_id: str, body: ProductIn, member: Seller, session: SessionDep, request: Request
) -> dict[str, Any]:
    merchant = await catalogue.require_staff(session, merchant_id, member.subject)
    product = await catalogue.update_product(
        session, merchant, product_id, body.draft(), body.active, _shop(request).clock.now()
    )
    await session.commit()
    return product_public(product)


@router.post("/merchants/{merchant_id}/campaigns")
async def add_campaign(
    merchant_id: str, body: CampaignIn, member: Seller, session: SessionDep, request: Request
) -> dict[str, Any]:
    merchant = await catalogue.require_staff(session, merchant_id, member.subject)
    c = await catalogue.add_campaign(
        session,
        merchant,
        name=body.name,
        extra_bp=body.extra_bp,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        product_id=body.product_id,
        now=_shop(request).clock.now(),
    )
    await session.commit()
    return {
        "id": c.id,
        "name": c.name,
        "extra_bp": c.extra_bp,
        "product_id": c.product_id,
        "starts_at": c.starts_at,
        "ends_at": c.ends_at,
    }


@router.get("/merchants/{merchant_id}/orders")
async def merchant_orders(
    merchant_id: str, member: Seller, session: SessionDep, status: str | None = None
) -> list[dict[str, Any]]:
    await catalogue.require_staff(session, merchant_id, member.subject)
    return [await order_public(session, o) for o in await orders.merchant_orders(session, merchant_id, status)]


async def _merchant_order(session: SessionDep, merchant_id: str, order_id: str, member: Principal) -> None:
    await catalogue.require_staff(session, merchant_id, member.subject)
    order = await orders.get_order(session, order_id)
    if order.merchant_id != merchant_id:
        raise PermissionDenied(f"order {order_id} is not merchant {merchant_id}'s")
    await session.close()


@router.post("/merchants/{merchant_id}/orders/{order_id}/ship")
async def ship_order(
    merchant_id: str, order_id: str, body: ShipIn, member: Seller, session: SessionDep, request: Request
) -> dict[str, Any]:
    await _merchant_order(session, merchant_id, order_id, member)
    return await order_public(session, await _shop(request).orders.ship(order_id, body.tracking))


@router.post("/merchants/{merchant_id}/orders/{order_id}/cancel")
async def merchant_cancel(
    merchant_id: str, order_id: str, member: Seller, session: SessionDep, request: Request
) -> dict[str, Any]:
    await _merchant_order(session, merchant_id, order_id, member)
    return await order_public(session, await _shop(request).orders.cancel(order_id))


@router.post("/merchants/{merchant_id}/orders/{order_id}/refund")
async def merchant_refund(
    merchant_id: str, order_id: str, member: Seller, session: SessionDep, request: Request
) -> dict[str, Any]:
    await _merchant_order(session, merchant_id, order_id, member)
    return await order_public(session, await _shop(request).orders.refund(order_id))


# ---- platform admin ----------------------------------------------------------------------------


@router.get("/admin/merchants")
async def admin_merchants(
    member: Reader, session: SessionDep, request: Request, status: str | None = None
) -> list[dict[str, Any]]:
    _require_admin(_shop(request), member)
    return [merchant_public(m) for m in await catalogue.merchants(session, status)]


@router.post("/admin/merchants/{merchant_id}/{decision}")
async def admin_decide(
    merchant_id: str, decision: str, member: Orderer, session: SessionDep, request: Request
) -> dict[str, Any]:
    shop = _shop(request)
    admin = _require_admin(shop, member)
    merchant = await catalogue.decide(session, merchant_id, decision, admin, shop.clock.now())
    await session.commit()
    return merchant_public(merchant)


@router.post("/admin/orders/{order_id}/refund")
async def admin_refund(order_id: str, member: Orderer, session: SessionDep, request: Request) -> dict[str, Any]:
    _require_admin(_shop(request), member)
    return await order_public(session, await _shop(request).orders.refund(order_id))
