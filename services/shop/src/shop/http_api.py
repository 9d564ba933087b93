"""The shop's JSON API (bearer member tokens): storefront, cart, checkout, orders, merchant console, admin."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from kizuna.kit.auth import Principal, member_scope
from kizuna.kit.bounds import NonNegInt64, PositiveInt64
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import PermissionDenied
from pydantic import BaseModel, Field

from shop import cart, catalogue, orders
from shop.catalogue import ProductDraft, Sort
from shop.models import Order
from shop.responses import (
    CampaignPublic,
    CartPublic,
    CategoryPublic,
    CheckoutPublic,
    MerchantPublic,
    MyMerchantPublic,
    OrderPublic,
    ProductPublic,
    StaffPublic,
)
from shop.wiring import Shop, ShopDep

router = APIRouter(prefix="/api")
# Every member route names its scope: reads need shop:read; the cart, checkout and order changes
# need shop:order (a third-party app the member allowed less is refused with 403
# insufficient_scope).
Reader = Annotated[Principal, Depends(member_scope("shop:read"))]
Orderer = Annotated[Principal, Depends(member_scope("shop:order"))]
# The merchant console (a member's own shop: products, campaigns, staff, orders to ship) needs
# shop:sell, which an app the member lets place orders does not get with shop:order.
Seller = Annotated[Principal, Depends(member_scope("shop:sell"))]


def is_admin(shop: Shop, principal: Principal) -> bool:
    return principal.has_scope("shop:admin") or principal.subject in shop.settings.shop_admins


def _require_admin(shop: Shop, principal: Principal) -> str:
    if not is_admin(shop, principal):
        raise PermissionDenied("only a platform admin may do this")
    return principal.subject


async def order_public(session: SessionDep, o: Order) -> OrderPublic:
    return OrderPublic.of(o, await orders.order_lines(session, o.id))


# ---- storefront --------------------------------------------------------------------------------


@router.get("/products")
async def list_products(
    session: SessionDep,
    category: str | None = None,
    q: str | None = None,
    sort: Sort = "newest",
    limit: PositiveInt64 = 50,
    offset: NonNegInt64 = 0,
) -> list[ProductPublic]:
    found = await catalogue.browse(session, category=category, text=q, sort=sort, limit=limit, offset=offset)
    return [ProductPublic.of(p, m) for p, m in found]


@router.get("/products/{product_id}")
async def get_product(product_id: str, session: SessionDep) -> ProductPublic:
    return ProductPublic.of(*await catalogue.product_page(session, product_id))


@router.get("/categories")
async def list_categories(session: SessionDep) -> list[CategoryPublic]:
    return [CategoryPublic(category=c, products=n) for c, n in await catalogue.categories(session)]


# ---- cart and checkout -----------------------------------------------------------------------------


class CartItemIn(BaseModel):
    product_id: str
    quantity: int


@router.get("/cart")
async def get_cart(member: Reader, session: SessionDep) -> CartPublic:
    return CartPublic.of(await cart.lines(session, member.subject))


@router.put("/cart/items")
async def put_cart_item(body: CartItemIn, member: Orderer, session: SessionDep, shop: ShopDep) -> CartPublic:
    await cart.set_quantity(session, member.subject, body.product_id, body.quantity, shop.clock.now())
    await session.commit()
    return await get_cart(member, session)


@router.delete("/cart/items/{product_id}")
async def delete_cart_item(product_id: str, member: Orderer, session: SessionDep) -> CartPublic:
    await cart.remove(session, member.subject, product_id)
    await session.commit()
    return await get_cart(member, session)


class CheckoutIn(BaseModel):
    idempotency_key: str
    points: int = 0
    merchant_id: str | None = None


@router.post("/checkout")
async def post_checkout(body: CheckoutIn, member: Orderer, shop: ShopDep) -> CheckoutPublic:
    done = await shop.checkout.checkout(
        member_id=member.subject,
        member_token=member.token,
        merchant_id=body.merchant_id,
        points=body.points,
        idempotency_key=body.idempotency_key,
    )
    return CheckoutPublic.of(done)


# ---- my orders ---------------------------------------------------------------------------------


async def _my_order(session: SessionDep, order_id: str, member: Principal) -> Order:
    order = await orders.get_order(session, order_id)
    if order.member_id != member.subject:
        raise PermissionDenied("this order belongs to another member")
    return order


@router.get("/orders")
async def my_orders(member: Reader, session: SessionDep) -> list[OrderPublic]:
    return [await order_public(session, o) for o in await orders.member_orders(session, member.subject)]


@router.get("/orders/{order_id}")
async def my_order(order_id: str, member: Reader, session: SessionDep) -> OrderPublic:
    return await order_public(session, await _my_order(session, order_id, member))


@router.post("/orders/{order_id}/cancel")
async def cancel_my_order(order_id: str, member: Orderer, session: SessionDep, shop: ShopDep) -> OrderPublic:
    await _my_order(session, order_id, member)
    await session.close()
    return await order_public(session, await shop.orders.cancel(order_id))


@router.post("/orders/{order_id}/confirm-delivery")
async def confirm_delivery(order_id: str, member: Orderer, session: SessionDep, shop: ShopDep) -> OrderPublic:
    order = await shop.orders.complete(order_id, member.subject)
    return await order_public(session, order)


class RefundRequestIn(BaseModel):
    reason: str


@router.post("/orders/{order_id}/refund-request")
async def refund_request(
    order_id: str, body: RefundRequestIn, member: Orderer, session: SessionDep, shop: ShopDep
) -> OrderPublic:
    order = await orders.request_refund(session, order_id, member.subject, body.reason, shop.clock.now())
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
    body: MerchantApplication, member: Seller, session: SessionDep, shop: ShopDep
) -> MerchantPublic:
    merchant = await catalogue.apply(session, member.subject, body.name, body.description, shop.clock.now())
    await session.commit()
    return MerchantPublic.of(merchant)


@router.get("/merchants/mine")
async def my_merchants(member: Seller, session: SessionDep) -> list[MyMerchantPublic]:
    return [
        MyMerchantPublic(**MerchantPublic.of(m).model_dump(), role=role)
        for m, role in await catalogue.merchants_of(session, member.subject)
    ]


@router.post("/merchants/{merchant_id}/staff")
async def add_staff(merchant_id: str, body: StaffIn, member: Seller, session: SessionDep) -> StaffPublic:
    await catalogue.require_staff(session, merchant_id, member.subject, owner=True)
    staff = await catalogue.add_staff(session, merchant_id, body.member_id)
    await session.commit()
    return StaffPublic.of(staff)


@router.get("/merchants/{merchant_id}/products")
async def merchant_products(merchant_id: str, member: Seller, session: SessionDep) -> list[ProductPublic]:
    await catalogue.require_staff(session, merchant_id, member.subject)
    return [ProductPublic.of(p) for p in await catalogue.merchant_products(session, merchant_id)]


@router.post("/merchants/{merchant_id}/products")
async def add_product(
    merchant_id: str, body: ProductIn, member: Seller, session: SessionDep, shop: ShopDep
) -> ProductPublic:
    merchant = await catalogue.require_staff(session, merchant_id, member.subject)
    product = await catalogue.add_product(session, merchant, body.draft(), shop.clock.now())
    await session.commit()
    return ProductPublic.of(product)


@router.put("/merchants/{merchant_id}/products/{product_id}")
async def update_product(
    merchant_id: str, product_id: str, body: ProductIn, member: Seller, session: SessionDep, shop: ShopDep
) -> ProductPublic:
    merchant = await catalogue.require_staff(session, merchant_id, member.subject)
    product = await catalogue.update_product(session, merchant, product_id, body.draft(), body.active, shop.clock.now())
    await session.commit()
    return ProductPublic.of(product)


@router.post("/merchants/{merchant_id}/campaigns")
async def add_campaign(
    merchant_id: str, body: CampaignIn, member: Seller, session: SessionDep, shop: ShopDep
) -> CampaignPublic:
    merchant = await catalogue.require_staff(session, merchant_id, member.subject)
    c = await catalogue.add_campaign(
        session,
        merchant,
        name=body.name,
        extra_bp=body.extra_bp,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        product_id=body.product_id,
        now=shop.clock.now(),
    )
    await session.commit()
    return CampaignPublic.of(c)


@router.get("/merchants/{merchant_id}/orders")
async def merchant_orders(
    merchant_id: str, member: Seller, session: SessionDep, status: str | None = None
) -> list[OrderPublic]:
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
    merchant_id: str, order_id: str, body: ShipIn, member: Seller, session: SessionDep, shop: ShopDep
) -> OrderPublic:
    await _merchant_order(session, merchant_id, order_id, member)
    return await order_public(session, await shop.orders.ship(order_id, body.tracking))


@router.post("/merchants/{merchant_id}/orders/{order_id}/cancel")
async def merchant_cancel(
    merchant_id: str, order_id: str, member: Seller, session: SessionDep, shop: ShopDep
) -> OrderPublic:
    await _merchant_order(session, merchant_id, order_id, member)
    return await order_public(session, await shop.orders.cancel(order_id))


@router.post("/merchants/{merchant_id}/orders/{order_id}/refund")
async def merchant_refund(
    merchant_id: str, order_id: str, member: Seller, session: SessionDep, shop: ShopDep
) -> OrderPublic:
    await _merchant_order(session, merchant_id, order_id, member)
    return await order_public(session, await shop.orders.refund(order_id))


# ---- platform admin ----------------------------------------------------------------------------


@router.get("/admin/merchants")
async def admin_merchants(
    member: Reader, session: SessionDep, shop: ShopDep, status: str | None = None
) -> list[MerchantPublic]:
    _require_admin(shop, member)
    return [MerchantPublic.of(m) for m in await catalogue.merchants(session, status)]


@router.post("/admin/merchants/{merchant_id}/{decision}")
async def admin_decide(
    merchant_id: str, decision: str, member: Orderer, session: SessionDep, shop: ShopDep
) -> MerchantPublic:
    admin = _require_admin(shop, member)
    merchant = await catalogue.decide(session, merchant_id, decision, admin, shop.clock.now())
    await session.commit()
    return MerchantPublic.of(merchant)


@router.post("/admin/orders/{order_id}/refund")
async def admin_refund(order_id: str, member: Orderer, session: SessionDep, shop: ShopDep) -> OrderPublic:
    _require_admin(shop, member)
    return await order_public(session, await shop.orders.refund(order_id))
