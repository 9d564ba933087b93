"""The order lifecycle after checkout.

    paid ──ship (capture points + card)──▶ shipped ──confirm / N days──▶ completed
     │                                        └─refund (points + money back)──▶ refunded
     └─cancel (void both, stock back), or not shipped by `ship_by`──▶ cancelled

Remote effects come first, under a claimed transient status (`shipping`, `cancelling`,
`refunding`) so that ship and cancel cannot interleave; every remote call is idempotent by a key
derived from the order, and each capture is recorded as soon as it is made, so an interrupted
transition is finished by a retry or by the housekeeping job (`recover_stuck`) with the same keys.
Where a transition cannot be finished the order goes where everyone can see it, with `problem`
saying why: a hold that can no longer be captured cancels the order (every capture refunded, every
hold voided, stock back); a refund a peer refuses leaves it `refund_failed`, to be refunded again.
The status change and its event commit together (outbox).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kizuna.common.v1.common_pb2 import Money
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from kizuna.kit.payments import PaymentsClient
from kizuna.kit.points import PointsClient
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shop.models import Order, OrderLine, Product
from shop.order_events import publish_order
from shop.settings import Settings

log = logging.getLogger("shop.orders")

PAID, SHIPPING, SHIPPED, COMPLETED = "paid", "shipping", "shipped", "completed"
CANCELLING, CANCELLED, REFUNDING, REFUNDED, REFUND_FAILED = (
    "cancelling",
    "cancelled",
    "refunding",
    "refunded",
    "refund_failed",
)
TRANSIENT = (SHIPPING, CANCELLING, REFUNDING)

# How a status reads in a sentence ("cannot cancel order X: it is being shipped").
_DESCRIBED = {
    SHIPPING: "being shipped",
    CANCELLING: "being cancelled",
    REFUNDING: "being refunded",
    REFUND_FAILED: "waiting to be refunded again (the last refund failed)",
}


def describe(status: str) -> str:
    return _DESCRIBED.get(status, status)


def payment_state(status: str) -> str:
    """Where the member's payment for an order stands: `held` (points set aside and the card
    authorized, taken when it ships), `taken`, or `returned` (cancelled or refunded)."""
    if status in (PAID, SHIPPING):
        return "held"
    if status in (CANCELLING, CANCELLED, REFUNDED):
        return "returned"
    return "taken"  # shipped, completed, and refunding or refund_failed until the refund is done


class WrongStatus(FailedPrecondition):
    """The order is not in a status the requested change starts from."""


class NotShipped(FailedPrecondition):
    """A hold could not be captured, so the order was cancelled instead of shipped."""


class RefundFailed(FailedPrecondition):
    """A peer refused the refund; the order is `refund_failed`."""


# A peer's answer that a hold or payment is settled for good (lapsed, voided, unknown, nothing
# left): retrying with the same key gets the same answer, so the transition cannot finish.
_FINAL = (FailedPrecondition, NotFound)


async def get_order(session: AsyncSession, order_id: str) -> Order:
    order = await session.get(Order, order_id, populate_existing=True)
    if order is None:
        raise NotFound(f"no order {order_id!r}")
    return order


async def order_lines(session: AsyncSession, order_id: str) -> list[OrderLine]:
    rows = await session.exec(select(OrderLine).where(OrderLine.order_id == order_id).order_by(col(OrderLine.id)))
    return list(rows.all())


async def member_orders(
    session: AsyncSession, member_id: str, limit: int = 50, before: str | None = None
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
    if order.status not in (SHIPPED, COMPLETED):
        raise FailedPrecondition(
            f"only a shipped or completed order can be refunded; order {order_id} is "
            f"{describe(order.status)}" + (" (cancel it instead)" if order.status == PAID else "")
        )
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

    # ---- storage -------------------------------------------------------------------------------

    async def _claim(
        self, order_id: str, sources: tuple[str, ...], transient: str, action: str, **values: object
    ) -> Order:
        async with self.db.transaction() as session:
            order = await get_order(session, order_id)
            if order.status == transient:
                return order  # a retry of an interrupted transition: finish it
            claimed = await session.exec(
                update(Order)
                .where(col(Order.id) == order_id, col(Order.status).in_(sources))
                .values(status=transient, updated_at=self.clock.now(), **values)
            )
            if claimed.rowcount != 1:
                raise WrongStatus(f"cannot {action} order {order_id}: it is {describe(order.status)}")
            return await get_order(session, order_id)

    async def _record(self, order: Order, expected: str, **values: object) -> None:
        """Save what a step achieved (a capture id, a new status) while the order is still `expected`."""
        async with self.db.transaction() as session:
            done = await session.exec(
                update(Order)
                .where(col(Order.id) == order.id, col(Order.status) == expected)
                .values(updated_at=self.clock.now(), **values)
            )
            if done.rowcount != 1:
                raise WrongStatus(f"order {order.id} changed meanwhile")
        for name, value in values.items():
            setattr(order, name, value)

    async def _settle(
        self,
        order: Order,
        transient: str,
        target: str,
        subject: str,
        *,
        restock: bool = False,
        event: dict[str, Any] | None = None,
        **values: object,
    ) -> Order:
        now = self.clock.now()
        async with self.db.transaction() as session:
            fields: dict[str, object] = {"status": target, "updated_at": now, **values}
            if target == SHIPPED:
                fields["shipped_at"] = now
            done = await session.exec(
                update(Order)
                .where(
                    col(Order.id) == order.id,
                    col(Order.status) == transient,
                )
                .values(**fields)
            )
            if done.rowcount != 1:
                raise WrongStatus(f"order {order.id} changed meanwhile")
            if restock:
                for line in await order_lines(session, order.id):
                    await session.exec(
                        update(Product)
                        .where(col(Product.id) == line.product_id)
                        .values(stock=col(Product.stock) + line.quantity)
                    )
            order = await get_order(session, order.id)
            await publish_order(session, order, subject, now, **(event or {}))
        return order

    # ---- transitions ---------------------------------------------------------------------------

    async def ship(self, order_id: str, tracking: str = "") -> Order:
        """The merchant shipped: capture the points and the card, then mark it shipped."""
        order = await self._claim(order_id, (PAID,), SHIPPING, "ship", tracking=tracking.strip()[:200])
        return await self._finish_shipping(order)

    async def _finish_shipping(self, order: Order) -> Order:
        try:
            if order.reservation_id and not order.points_capture_entry_id:
                entry_id = (await self.points.capture(order.reservation_id, f"{order.id}:capture-points")).entry_id
                await self._record(order, SHIPPING, points_capture_entry_id=entry_id)
            if order.authorization_id and not order.card_capture_id:
                capture_id = await self.payments.capture(order.authorization_id, f"{order.id}:capture-card")
                await self._record(order, SHIPPING, card_capture_id=capture_id)
        except WrongStatus:
            raise  # the order moved on meanwhile (our own _record): not a peer's final answer
        except _FINAL as exc:
            problem = f"Could not be shipped ({exc.message}): cancelled, the points and the card payment returned."
            await self._record(order, SHIPPING, status=CANCELLING, problem=problem)
            await self._finish_cancelling(order)
            raise NotShipped(
                f"order {order.id} could not be shipped ({exc.message}); it is cancelled and "
                "the member's points and card payment are returned"
            ) from exc
        return await self._settle(order, SHIPPING, SHIPPED, "shop.order.shipped")

    async def cancel(self, order_id: str, problem: str = "") -> Order:
        """Cancel before shipment: void the card and the points, put the stock back."""
        order = await self._claim(order_id, (PAID,), CANCELLING, "cancel", **({"problem": problem} if problem else {}))
        return await self._finish_cancelling(order)

    async def _finish_cancelling(self, order: Order) -> Order:
        """Give back what the order holds (void) or took (refund: a shipment that failed half-way)."""
        if order.authorization_id:
            if order.card_capture_id:
                await self.payments.refund(order.authorization_id, f"{order.id}:return-card")
            else:
                await self.payments.void(order.authorization_id, f"{order.id}:void-card")
        if order.reservation_id:
            if order.points_capture_entry_id:
                await self.points.refund(
                    order.reservation_id, f"{order.id}:return-points", reason=f"Order {order.id} could not be shipped"
                )
            else:
                await self.points.void(order.reservation_id, f"{order.id}:void-points")
        return await self._settle(order, CANCELLING, CANCELLED, "shop.order.cancelled", restock=True)

    async def refund(self, order_id: str) -> Order:
        """Refund in full after shipment: the money to the card, the points to the member."""
        order = await self._claim(order_id, (SHIPPED, COMPLETED, REFUND_FAILED), REFUNDING, "refund")
        return await self._finish_refunding(order)

    async def _finish_refunding(self, order: Order) -> Order:
        # Attempt 0 keeps the original keys; a retry after a refusal gets fresh ones for what is left.
        attempt = f":{order.refund_attempt}" if order.refund_attempt else ""
        try:
            if order.reservation_id and order.points_refunded is None:
                points = await self.points.refund(
                    order.reservation_id, f"{order.id}:refund-points{attempt}", reason=f"Order {order.id} refunded"
                )
                await self._record(order, REFUNDING, points_refunded=points)
            if order.authorization_id and order.card_refunded_minor is None:
                minor = await self.payments.refund(order.authorization_id, f"{order.id}:refund-card{attempt}")
                await self._record(order, REFUNDING, card_refunded_minor=minor)
        except WrongStatus:
            raise  # the order moved on meanwhile (our own _record): not a peer's final answer
        except _FINAL as exc:
            problem = f"The refund failed ({exc.message}); refund it again once that is resolved."
            await self._record(
                order, REFUNDING, status=REFUND_FAILED, problem=problem, refund_attempt=order.refund_attempt + 1
            )
            raise RefundFailed(
                f"the refund of order {order.id} failed ({exc.message}); refund it again once "
                "that is resolved (what was already refunded is not refunded twice)"
            ) from exc
        refunded = Money(amount_minor=order.card_refunded_minor or 0, currency=order.currency)
        return await self._settle(
            order,
            REFUNDING,
            REFUNDED,
            "shop.order.refunded",
            problem="",
            event={"refunded": refunded, "points_refunded": order.points_refunded or 0},
        )

    async def complete(self, order_id: str, member_id: str | None = None) -> Order:
        """Delivery confirmed by the member (or, with member_id None, by the auto-completion job)."""
        async with self.db.sessions() as session:
            order = await get_order(session, order_id)
        if member_id is not None and order.member_id != member_id:
            raise PermissionDenied("this order belongs to another member")
        if order.status != SHIPPED:
            raise WrongStatus(f"only a shipped order can be completed; order {order_id} is {describe(order.status)}")
        return await self._settle(order, SHIPPED, COMPLETED, "shop.order.completed")

    # ---- the housekeeping job's part -----------------------------------------------------------

    async def auto_complete(self) -> int:
        """Complete orders shipped more than `auto_complete_days` ago; returns how many."""
        cutoff = self.clock.now() - timedelta(days=self.settings.auto_complete_days)
        async with self.db.sessions() as session:
            due = list(
                (
                    await session.exec(
                        select(Order.id).where(Order.status == SHIPPED, col(Order.shipped_at) <= cutoff).limit(500)
                    )
                ).all()
            )
        done = 0
        for order_id in due:
            try:
                await self.complete(order_id)
                done += 1
            except WrongStatus:
                pass  # confirmed or refunded meanwhile
        return done

    async def cancel_unshipped(self) -> int:
        """Cancel paid orders past their ship-by deadline, before their holds lapse; returns how many."""
        async with self.db.sessions() as session:
            due = list(
                (
                    await session.exec(
                        select(Order.id, Order.ship_by)
                        .where(Order.status == PAID, col(Order.ship_by) <= self.clock.now())
                        .limit(500)
                    )
                ).all()
            )
        done = 0
        for order_id, ship_by in due:
            problem = (
                f"Not shipped by {ship_by:%Y-%m-%d %H:%M} UTC: cancelled automatically, the points and the "
                "card hold released."
            )
            try:
                await self.cancel(order_id, problem)
                done += 1
            except WrongStatus:
                pass  # shipped or cancelled meanwhile
            except DomainError:  # a peer is away: the order stays `cancelling` and recover_stuck finishes it
                log.exception("could not cancel an overdue order yet", extra={"order_id": order_id})
        return done

    async def recover_stuck(self) -> int:
        """Finish (or unwind) orders left mid-transition by a crash or a peer outage; returns how many."""
        cutoff = self.clock.now() - timedelta(seconds=self.settings.order_stuck_seconds)
        async with self.db.sessions() as session:
            stuck = list(
                (
                    await session.exec(
                        select(Order).where(col(Order.status).in_(TRANSIENT), col(Order.updated_at) < cutoff).limit(100)
                    )
                ).all()
            )
        finish: dict[str, Callable[[Order], Awaitable[Order]]] = {
            SHIPPING: self._finish_shipping,
            CANCELLING: self._finish_cancelling,
            REFUNDING: self._finish_refunding,
        }
        for order in stuck:
            try:
                await finish[order.status](order)
            except WrongStatus:
                pass  # finished meanwhile by a retry of the same action
            except (NotShipped, RefundFailed) as exc:  # cannot finish: the order now shows why
                log.warning("stuck order could not be finished", extra={"order_id": order.id, "problem": exc.message})
            except DomainError:
                log.exception("could not finish a stuck order; retrying next round", extra={"order_id": order.id})
        return len(stuck)
