"""What the shop holds about a member, and how it forgets them (kizuna.kit.privacy).

Export: merchant roles, cart, checkouts and orders with their lines. Erasure: the cart, failed
checkouts and sign-in sessions go; orders and completed checkouts stay for the merchants' books
and the commission, but their member ID is replaced by a pseudonym no one can trace back (a new
random ID per erasure); staff roles end (a merchant the member owned keeps selling under its
other staff, its `applied_by` pseudonymised too).
"""

from __future__ import annotations

from typing import Any

from kizuna.kit.oidc_client import WebSession
from sqlalchemy import update
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shop import cart, catalogue, orders
from shop.models import CartItem, Checkout, Merchant, MerchantStaff, Order, new_id


def _checkout(c: Checkout) -> dict[str, Any]:
    return {
        "id": c.id,
        "state": c.state,
        "order_id": c.order_id,
        "merchant_id": c.merchant_id,
        "total_minor": c.total_minor,
        "currency": c.currency,
        "points": c.points,
        "card_minor": c.card_minor,
        "error": c.error_message,
        "created_at": c.created_at.isoformat(),
    }


async def _order(session: AsyncSession, o: Order) -> dict[str, Any]:
    return {
        "id": o.id,
        "merchant_id": o.merchant_id,
        "status": o.status,
        "total_minor": o.total_minor,
        "currency": o.currency,
        "points_used": o.points_used,
        "card_minor": o.card_minor,
        "tracking": o.tracking,
        "created_at": o.created_at.isoformat(),
        "refund_reason": o.refund_reason,
        "lines": [
            {
                "product_id": ln.product_id,
                "title": ln.title,
                "quantity": ln.quantity,
                "unit_price_minor": ln.unit_price_minor,
            }
            for ln in await orders.order_lines(session, o.id)
        ],
    }


async def export_member(session: AsyncSession, member_id: str) -> dict[str, Any]:
    member_orders = (
        await session.exec(select(Order).where(Order.member_id == member_id).order_by(col(Order.id)))
    ).all()
    checkouts = (
        await session.exec(select(Checkout).where(Checkout.member_id == member_id).order_by(col(Checkout.id)))
    ).all()
    return {
        "merchant_roles": [
            {"merchant_id": m.id, "merchant_name": m.name, "role": role}
            for m, role in await catalogue.merchants_of(session, member_id)
        ],
        "cart": [
            {"product_id": ln.product.id, "title": ln.product.title, "quantity": ln.item.quantity}
            for ln in await cart.lines(session, member_id)
        ],
        "orders": [await _order(session, o) for o in member_orders],
        "checkouts": [_checkout(c) for c in checkouts],
    }


async def erase_member(session: AsyncSession, member_id: str) -> None:
    pseudonym = new_id("erased")
    await session.exec(delete(CartItem).where(col(CartItem.member_id) == member_id))
    await session.exec(delete(Checkout).where(col(Checkout.member_id) == member_id, col(Checkout.state) == "failed"))
    await session.exec(update(Checkout).where(col(Checkout.member_id) == member_id).values(member_id=pseudonym))
    await session.exec(
        update(Order).where(col(Order.member_id) == member_id).values(member_id=pseudonym, refund_reason="")
    )
    await session.exec(delete(MerchantStaff).where(col(MerchantStaff.member_id) == member_id))
    await session.exec(update(Merchant).where(col(Merchant.applied_by) == member_id).values(applied_by=pseudonym))
    await session.exec(update(Merchant).where(col(Merchant.verified_by) == member_id).values(verified_by=pseudonym))
    await session.exec(delete(WebSession).where(col(WebSession.member_id) == member_id))
