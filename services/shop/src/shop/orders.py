"""The order lifecycle after checkout.

    paid ──ship (capture points + card)──▶ shipped ──confirm / N days──▶ completed
     └─cancel (void both, stock back)──▶ cancelled        └─refund (points + money back)──▶ refunded

Remote effects come first, under a claimed transient status (`shipping`, `cancelling`,
`refunding`) so that ship and cancel cannot interleave; every remote call is idempotent by a key
derived from the order, so a failed transition is simply retried. The status change and its event
commit together (outbox).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from kizuna.common.v1.common_pb2 import Money
from kizuna.kit.db import Database
from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shop.clock import Clock
from shop.models import Order, OrderLine, Product
from shop.order_events import publish_order
from shop.peers import PaymentsClient, PointsClient
from shop.settings import Settings

log = logging.getLogger("shop.orders")

# Transient statuses read as their origin to the outside world.
PUBLIC_STATUS = {"shipping": "paid", "cancelling": "paid", "refunding": "shipped"}


async def get_order(session: AsyncSession, order_id: str) -> Order:
    order = await session.get(Order, order_id, populate_existing=True)
    if order is None:
        raise NotFound(f"no order {order_id!r}")
    return order


async def order_lines(session: AsyncSession, order_id: str) -> list[OrderLine]:
    rows = await session.exec(select(OrderLine).where(OrderLine.order_id == order_id).order_by(col(OrderLine.id)))
    return list(rows.all())


async def member_orders(session: AsyncSession, member_id: str, limit: int = 50, before: str | None = None
                        ) -> list[Order]:
    query = select(Order).where(Order.member_id == member_id)
    if before:
        query = query.where(col(Order.id) < before)
    return list((await session.exec(query.order_by(col(Order.id).desc()).limit(limit))).all())


async def merchant_orders(session: AsyncSession, merchant_id: str, status: str | None = None) -> list[Order]:
    query = select(Order).where(Order.merchant_id == merchant_id)
    if status:
        query = query.where(Order.status == status)
    return list((await session.exec(query.order_by(col(Order.id).desc()).limit(200))).all())


async def request_refund(session: AsyncSession, order_id: str, member_id: str, reason: str, now: datetime) -> Order:
    """The member asks for a refund of a shipped or completed order; the merchant (or an admin) decides."""
    order = await get_order(session, order_id)
    if order.member_id != member_id:
        raise PermissionDenied("this order belongs to another member")
    reason = reason.strip()
    if not reason or len(reason) > 1000:
        raise InvalidArgument("tell the merchant why, in 1 to 1000 characters")
    if order.status not in ("shipped", "completed"):
        raise FailedPrecondition(f"only a shipped or completed order can be refunded; order {order_id} is "
                                 f"{PUBLIC_STATUS.get(order.status, order.status)}" +
                                 (" (cancel it instead)" if order.status == "paid" else ""))
    if order.refund_requested_at is not None:
        raise FailedPrecondition(f"a refund of order {order_id} was already requested")
    order.refund_requested_at, order.refund_reason = now, reason
    session.add(order)
    return order


@dataclass
class OrderLifecycle:
    db: Database
    points: PointsClient
    payments: PaymentsClient
    settings: Settings
    clock: Clock

    async def _claim(self, order_id: str, sources: tuple[str, ...], transient: str, action: str) -> Order:
        async with self.db.transaction() as session:
            order = await get_order(session, order_id)
            if order.status == transient:
                return order  # a retry of an interrupted transition
            claimed = await session.exec(update(Order)  # type: ignore[call-overload]
                                         .where(col(Order.id) == order_id, col(Order.status).in_(sources))
                                         .values(status=transient, updated_at=self.clock.now()))
            if claimed.rowcount != 1:
                status = PUBLIC_STATUS.get(order.status, order.status)
                raise FailedPrecondition(f"cannot {action} order {order_id}: it is {status}")
            order.status = transient
            return order

    async def _settle(self, order: Order, transient: str, target: str, subject: str, *, restock: bool = False,
                      **extra: object) -> Order:
        now = self.clock.now()
        async with self.db.transaction() as session:
            fields: dict[str, object] = {"status": target, "updated_at": now}
            if target == "shipped":
                fields["shipped_at"] = now
            fields.update({k: v for k, v in extra.items() if k in ("points_capture_entry_id", "card_capture_id",
                                                                     "tracking")})
            done = await session.exec(update(Order).where(col(Order.id) == order.id,  # type: ignore[call-overload]
                                                          col(Order.status) == transient).values(**fields))
            if done.rowcount != 1:
                raise FailedPrecondition(f"order {order.id} changed meanwhile")
            if restock:
                for line in await order_lines(session, order.id):
                    await session.exec(update(Product).where(col(Product.id) == line.product_id)  # type: ignore[call-overload]
                                       .values(stock=col(Product.stock) + line.quantity))
            order = await get_order(session, order.id)
            event_extra = {k: v for k, v in extra.items() if k in ("refunded", "points_refunded")}
            publish_order(session, order, subject, now, **event_extra)
        return order

    async def ship(self, order_id: str, tracking: str = "") -> Order:
        """The merchant shipped: capture the points and the card, then mark it shipped."""
        order = await self._claim(order_id, ("paid",), "shipping", "ship")
        entry_id = capture_id = None
        if order.reservation_id:
            entry_id = await self.points.capture(order.reservation_id, f"{order.id}:capture-points")
        if order.authorization_id:
            capture_id = await self.payments.capture(order.authorization_id, f"{order.id}:capture-card")
        return await self._settle(order, "shipping", "shipped", "shop.order.shipped",
                                  points_capture_entry_id=entry_id, card_capture_id=capture_id,
                                  tracking=tracking.strip()[:200])

    async def cancel(self, order_id: str) -> Order:
        """Cancel before shipment: void the card and the points, put the stock back."""
        order = await self._claim(order_id, ("paid",), "cancelling", "cancel")
        if order.authorization_id:
            await self.payments.void(order.authorization_id, f"{order.id}:void-card")
        if order.reservation_id:
            await self.points.void(order.reservation_id, f"{order.id}:void-points")
        return await self._settle(order, "cancelling", "cancelled", "shop.order.cancelled", restock=True)

    async def refund(self, order_id: str) -> Order:
        """Refund in full after shipment: the money to the card, the points to the member."""
        order = await self._claim(order_id, ("shipped", "completed"), "refunding", "refund")
        refunded_points = refunded_minor = 0
        if order.reservation_id:
            refunded_points = await self.points.refund(order.reservation_id, f"Order {order.id} refunded",
                                                       f"{order.id}:refund-points")
        if order.authorization_id:
            refunded_minor = await self.payments.refund(order.authorization_id, f"{order.id}:refund-card")
        return await self._settle(order, "refunding", "refunded", "shop.order.refunded",
                                  refunded=Money(amount_minor=refunded_minor, currency=order.currency),
                                  points_refunded=refunded_points)

    async def complete(self, order_id: str, member_id: str | None = None) -> Order:
        """Delivery confirmed by the member (or, with member_id None, by the auto-completion job)."""
        async with self.db.sessions() as session:
            order = await get_order(session, order_id)
        if member_id is not None and order.member_id != member_id:
            raise PermissionDenied("this order belongs to another member")
        if order.status != "shipped":
            raise FailedPrecondition(f"only a shipped order can be completed; order {order_id} is "
                                     f"{PUBLIC_STATUS.get(order.status, order.status)}")
        return await self._settle(order, "shipped", "completed", "shop.order.completed")

    async def auto_complete(self) -> int:
        """Complete orders shipped more than `auto_complete_days` ago; returns how many."""
        cutoff = self.clock.now() - timedelta(days=self.settings.auto_complete_days)
        async with self.db.sessions() as session:
            due = list((await session.exec(select(Order.id).where(Order.status == "shipped",
                                                                  col(Order.shipped_at) <= cutoff).limit(500))).all())
        done = 0
        for order_id in due:
            try:
                await self.complete(order_id)
                done += 1
            except FailedPrecondition:
                pass  # confirmed or refunded meanwhile
        return done
