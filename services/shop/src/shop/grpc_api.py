"""ShopService over gRPC: reads orders for other services (a service with shop:read, or the member)."""

from __future__ import annotations

from typing import Any

from kizuna.common.v1.common_pb2 import Money, PageInfo
from kizuna.kit.auth import current_call
from kizuna.kit.clock import timestamp
from kizuna.kit.service import Runtime
from kizuna.shop.v1 import shop_pb2 as pb
from kizuna.shop.v1 import shop_pb2_grpc

from shop import orders
from shop.models import Order, OrderLine

# The contract has no in-between statuses: an order mid-transition (or whose refund failed) is
# still what it was before the change began.
STATUS = {
    "paid": pb.ORDER_STATUS_PAID,
    "shipped": pb.ORDER_STATUS_SHIPPED,
    "completed": pb.ORDER_STATUS_COMPLETED,
    "cancelled": pb.ORDER_STATUS_CANCELLED,
    "refunded": pb.ORDER_STATUS_REFUNDED,
    "shipping": pb.ORDER_STATUS_PAID,
    "cancelling": pb.ORDER_STATUS_PAID,
    "refunding": pb.ORDER_STATUS_SHIPPED,
    "refund_failed": pb.ORDER_STATUS_SHIPPED,
}


def to_proto(order: Order, lines: list[OrderLine]) -> pb.Order:
    def money(minor: int) -> Money:
        return Money(amount_minor=minor, currency=order.currency)

    return pb.Order(
        order_id=order.id,
        member_id=order.member_id,
        merchant_id=order.merchant_id,
        lines=[
            pb.OrderLine(
                product_id=ln.product_id, title=ln.title, quantity=ln.quantity, unit_price=money(ln.unit_price_minor)
            )
            for ln in lines
        ],
        total=money(order.total_minor),
        points_used=order.points_used,
        status=STATUS[order.status],
        created_at=timestamp(order.created_at),
        updated_at=timestamp(order.updated_at),
        card_amount=money(order.card_minor),
        merchant_bonus_points=order.bonus_points,
        commission=money(order.commission_minor),
    )


def _may_read(member_id: str) -> None:
    # The member's own token with shop:read, or an ecosystem service with shop:read on its own.
    current_call().require_member_or_service(member_id, "shop:read", "shop:read")


class ShopApi(shop_pb2_grpc.ShopServiceServicer):
    def __init__(self, runtime: Runtime[Any]) -> None:
        self.db = runtime.db

    async def GetOrder(self, request: pb.GetOrderRequest, context: Any) -> pb.GetOrderResponse:
        current_call().require_read_scope("shop:read", "shop:read")
        async with self.db.sessions() as session:
            order = await orders.get_order(session, request.order_id)
            _may_read(order.member_id)
            return pb.GetOrderResponse(order=to_proto(order, await orders.order_lines(session, order.id)))

    async def ListMemberOrders(self, request: pb.ListMemberOrdersRequest, context: Any) -> pb.ListMemberOrdersResponse:
        _may_read(request.member_id)
        size = request.page.page_size if 0 < request.page.page_size <= 100 else 20
        async with self.db.sessions() as session:
            found = await orders.member_orders(session, request.member_id, size + 1, request.page.page_token or None)
            page = found[:size]
            response = pb.ListMemberOrdersResponse(
                orders=[to_proto(o, await orders.order_lines(session, o.id)) for o in page],
                page_info=PageInfo(next_page_token=page[-1].id if len(found) > size else ""),
            )
        return response
