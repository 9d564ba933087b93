"""A member's cart: products and quantities, checked against what is on sale when they are added."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kizuna.kit.errors import FailedPrecondition, NotFound
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shop.catalogue import ACTIVE
from shop.models import CartItem, Merchant, Product
from shop.pricing import validate_quantity


@dataclass(frozen=True)
class CartLine:
    item: CartItem
    product: Product
    merchant: Merchant

    @property
    def amount_minor(self) -> int:
        return self.item.quantity * self.product.price_minor


@dataclass(frozen=True)
class MerchantCart:
    """The cart's products of one merchant: one checkout, one order."""

    merchant: Merchant
    lines: list[CartLine]

    @property
    def total(self) -> int:
        return sum(line.amount_minor for line in self.lines)


def by_merchant(lines: list[CartLine]) -> list[MerchantCart]:
    """The cart's lines grouped by merchant, in the order each merchant first appears."""
    groups: dict[str, list[CartLine]] = {}
    for line in lines:
        groups.setdefault(line.merchant.id, []).append(line)
    return [MerchantCart(group[0].merchant, group) for group in groups.values()]


async def sellable(session: AsyncSession, product_id: str) -> tuple[Product, Merchant]:
    """The product exists, is on sale, and its merchant is active — or a clear error why not."""
    product = await session.get(Product, product_id)
    if product is None:
        raise NotFound(f"no product {product_id!r}")
    merchant = await session.get(Merchant, product.merchant_id)
    if merchant is None or merchant.status != ACTIVE:
        raise FailedPrecondition(f"merchant {product.merchant_id} is not active; its products cannot be bought")
    if not product.active:
        raise FailedPrecondition(f"product {product_id} is no longer on sale")
    return product, merchant


async def set_quantity(
    session: AsyncSession, member_id: str, product_id: str, quantity: int, now: datetime
) -> CartItem:
    validate_quantity(quantity)
    product, _ = await sellable(session, product_id)
    if quantity > product.stock:
        raise FailedPrecondition(f"only {product.stock} of {product.title!r} left")
    item = await session.get(CartItem, (member_id, product_id))
    if item is None:
        item = CartItem(member_id=member_id, product_id=product_id, quantity=quantity, added_at=now)
    item.quantity = quantity
    session.add(item)
    return item


async def remove(session: AsyncSession, member_id: str, product_id: str) -> None:
    await session.exec(
        delete(CartItem).where(
            col(CartItem.member_id) == member_id,
            col(CartItem.product_id) == product_id,
        )
    )


async def lines(session: AsyncSession, member_id: str) -> list[CartLine]:
    rows = await session.exec(
        select(CartItem, Product, Merchant)
        .join(Product, col(Product.id) == col(CartItem.product_id))
        .join(Merchant, col(Merchant.id) == col(Product.merchant_id))
        .where(CartItem.member_id == member_id)
        .order_by(col(CartItem.added_at), col(CartItem.product_id))
    )
    return [CartLine(i, p, m) for i, p, m in rows.all()]
