"""The events the shop publishes about orders (subjects as declared in kizuna/shop/v1/events.proto)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.common.v1.common_pb2 import Money
from kizuna.kit.events import publish
from kizuna.shop.v1 import events_pb2 as ev
from sqlmodel.ext.asyncio.session import AsyncSession

from shop.models import Order

MESSAGES: dict[str, Any] = {
    "shop.order.paid": ev.OrderPaid,
    "shop.order.shipped": ev.OrderShipped,
    "shop.order.completed": ev.OrderCompleted,
    "shop.order.cancelled": ev.OrderCancelled,
    "shop.order.refunded": ev.OrderRefunded,
}


def timestamp(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def order_event(order: Order, subject: str, at: datetime, **extra: Any) -> Any:
    money = lambda minor: Money(amount_minor=minor, currency=order.currency)  # noqa: E731
    return MESSAGES[subject](
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


def publish_order(session: AsyncSession, order: Order, subject: str, at: datetime, **extra: Any) -> str:
    return publish(session, subject, order_event(order, subject, at, **extra), member_id=order.member_id)
