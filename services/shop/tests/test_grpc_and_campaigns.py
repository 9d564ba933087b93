"""ShopService for other services, and merchant campaigns carried to points in the order events."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from kizuna.kit.auth import call_metadata
from kizuna.shop.v1 import events_pb2, shop_pb2, shop_pb2_grpc
from shop_peers import PaymentsPeer, PointsPeer
from shop_support import ShopApi, shop_events, wait_until

BUYER = "mbr_buyer"


async def _order(api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer) -> tuple[str, str, str]:
    merchant = await api.active_merchant("mbr_owner")
    product = await api.product(merchant, "mbr_owner", price=2000, stock=5)
    now = api.shop.clock.now()
    await api.ok("POST", f"/api/merchants/{merchant}/campaigns", "mbr_owner",
                 {"name": "Tea week x5", "extra_bp": 500, "starts_at": (now - timedelta(hours=1)).isoformat(),
                  "ends_at": (now + timedelta(days=7)).isoformat(), "product_id": product})
    points_peer.balances[BUYER] = 0
    payments_peer.limits[BUYER] = 100_000
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 2})
    resp = await api.checkout(BUYER)
    assert resp.status_code == 200, resp.text
    return merchant, product, resp.json()["order_id"]


async def test_campaign_bonus_is_recorded_and_carried_in_the_paid_event(
        api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer, nats_url: str) -> None:
    _, _, order = await _order(api, points_peer, payments_peer)
    assert (await api.ok("GET", f"/api/orders/{order}", BUYER))["merchant_bonus_points"] == 200
    events = await wait_until(lambda: shop_events(nats_url))
    paid = events_pb2.OrderPaid.FromString(events[0][1])
    assert (paid.merchant_bonus_points, paid.commission.amount_minor) == (200, 200)
    bad = await api.call("POST", "/api/merchants/mch_unknown/campaigns",
                         "mbr_owner", {"name": "x", "extra_bp": 100, "starts_at": "2025-01-01T00:00:00Z",
                                       "ends_at": "2025-02-01T00:00:00Z"})
    assert bad.status_code == 404


async def test_shop_service_reads_orders_for_the_member_or_an_authorized_service(
        api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer) -> None:
    _, _, order = await _order(api, points_peer, payments_peer)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.runtime.grpc_port}") as channel:
        stub = shop_pb2_grpc.ShopServiceStub(channel)
        service_md = call_metadata(api.issuer.service_token("travel", "shop:read"))
        got = await stub.GetOrder(shop_pb2.GetOrderRequest(order_id=order), metadata=service_md, timeout=5)
        assert got.order.status == shop_pb2.ORDER_STATUS_PAID and got.order.total.amount_minor == 4000
        assert got.order.lines[0].quantity == 2 and got.order.merchant_bonus_points == 200
        mine = await stub.ListMemberOrders(shop_pb2.ListMemberOrdersRequest(member_id=BUYER),
                                           metadata=call_metadata(api.token(BUYER)), timeout=5)
        assert [o.order_id for o in mine.orders] == [order]
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.GetOrder(shop_pb2.GetOrderRequest(order_id=order),
                                metadata=call_metadata(api.token("mbr_someone_else")), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.GetOrder(shop_pb2.GetOrderRequest(order_id="ord_nope"), metadata=service_md, timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        no_scope = call_metadata(api.issuer.service_token("travel", "points:read"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListMemberOrders(shop_pb2.ListMemberOrdersRequest(member_id=BUYER), metadata=no_scope,
                                        timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
