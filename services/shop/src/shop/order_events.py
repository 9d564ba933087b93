"""The events the shop publishes about orders (subjects as declared in kizuna/shop/v1/events.proto)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from kizuna.common.v1.common_pb2 import Money
from kizuna.kit.clock import timestamp
from kizuna.kit.events import publish
from kizuna.kit.points import publish_purchase
from kizuna.shop.v1 import events_pb2 as ev
from sqlmodel.ext.asyncio.session import AsyncSession

from shop.models import Order

MESSAGES: dict[str, type[Message]] = {
    "shop.order.paid": ev.OrderPaid,
    "shop.order.shipped": ev.OrderShipped,
    "shop.order.completed": ev.OrderCompleted,
    "shop.order.cancelled": ev.OrderCancelled,
    "shop.order.refunded": ev.OrderRefunded,
}


def order_event(order: Order, subject: str, at: datetime, **extra: Any) -> Message:
    def money(minor: int) -> Money:
        return Money(amount_minor=minor, currency=order.currency)

    event: Message = MESSAGES[subject](
        order_id=order.id,
        member_id=order.member_id,
        merchant_id=order.merchant_id,
        total=money(order.total_minor),
        points_used=order.points_used,
        occurred_at=timestamp(at),
        merchant_bonus_points=order.bonus_points,
        commission=money(order.commission_minor),
        card_amount=money(order.card_minor),
        **extra,
    )
    return event


# The order events that are also steps of the earning contract (points earns from those, not from
# the shop's own events).
PURCHASE_STAGES = {
    "shop.order.paid": "paid",
    "shop.order.completed": "completed",
    "shop.order.cancelled": "cancelled",
    "shop.order.refunded": "refunded",
}


async def publish_order(session: AsyncSession, order: Order, subject: str, at: datetime, **extra: Any) -> str:
    event_id = await publish(session, subject, order_event(order, subject, at, **extra), member_id=order.member_id)
    stage = PURCHASE_STAGES.get(subject)
    if stage is not None:
        refunded = extra.get("refunded")
        await publish_purchase(
            session,
            "shop",
            stage,
            reference=order.id,
            member_id=order.member_id,
            # Earned on the money paid by card; the points used earn nothing.
            paid_minor=order.card_minor,
            currency=order.currency,
            points_used=order.points_used,
            label=f"order {order.id}",
            category="goods",
            merchant_bonus_points=order.bonus_points,
            # A shop refund is one, of the whole order.
            refund_reference=f"{order.id}:refund" if refunded is not None else "",
            refunded_minor=refunded.amount_minor if refunded is not None else 0,
            at=at,
        )
    return event_id
