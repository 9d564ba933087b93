"""Orders left mid-transition (`shipping`, `cancelling`, `refunding`) by a peer that is away, and
transitions a peer refuses for good, against test peers that can be told to fail one call.

Journeys against the REAL points and fintech services are in tests/shop/; these need failures the
real services cannot be made to produce on demand.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.clock import FrozenClock
from kizuna.kit.testing import wait_until
from kizuna.shop.v1 import shop_pb2, shop_pb2_grpc

from .shop_peers import PaymentsPeer, PointsPeer
from .shop_support import ShopApi, shop_events

OWNER = "mbr_owner"
BUYER = "mbr_buyer"


async def _paid_order(api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer) -> tuple[str, str, str]:
    """A paid order of one ¥1,000 product: 300 points reserved, ¥700 held on the card."""
    merchant = await api.active_merchant(OWNER)
    product = await api.product(merchant, OWNER, price=1000, stock=5)
    points_peer.balances[BUYER] = 500
    payments_peer.limits[BUYER] = 100_000
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    resp = await api.checkout(BUYER, points=300)
    assert resp.status_code == 200, resp.text
    return merchant, product, str(resp.json()["order_id"])


async def _order(api: ShopApi, order_id: str) -> dict[str, object]:
    order: dict[str, object] = await api.ok("GET", f"/api/orders/{order_id}", BUYER)
    return order


async def _published(api: ShopApi, order_id: str, subject: str) -> int:
    """How many `subject` events about the order reached the SHOP stream (waits for the first)."""

    async def found() -> int:
        events = await shop_events(api.runtime.settings.nats_url)
        return sum(1 for s, d in events if s == subject and order_id.encode() in d)

    count: int = await wait_until(found)
    return count


def _stuck_long_enough(api: ShopApi, clock: FrozenClock) -> None:
    clock.advance(timedelta(seconds=api.runtime.settings.order_stuck_seconds + 1))


async def test_a_shipment_cut_short_by_a_card_outage_is_finished_by_the_job_with_the_same_keys(
    api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer
) -> None:
    clock = api.runtime.clock = FrozenClock()
    merchant, _, order = await _paid_order(api, points_peer, payments_peer)
    payments_peer.down = {"Capture"}
    ship = await api.call("POST", f"/api/merchants/{merchant}/orders/{order}/ship", OWNER, {"tracking": "JP1"})
    assert ship.status_code == 503 and "fintech" in ship.json()["message"], ship.text
    # The points were captured (and recorded); the order says it is being shipped, and cannot be cancelled.
    assert (await _order(api, order))["status"] == "shipping"
    refused = await api.call("POST", f"/api/orders/{order}/cancel", BUYER)
    assert refused.status_code == 409 and "it is being shipped" in refused.json()["message"], refused.text
    # The gRPC contract has no in-between status: other services still read it as paid.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.runtime.grpc_port}") as channel:
        got = await shop_pb2_grpc.ShopServiceStub(channel).GetOrder(
            shop_pb2.GetOrderRequest(order_id=order), metadata=call_metadata(api.token(BUYER)), timeout=5
        )
    assert got.order.status == shop_pb2.ORDER_STATUS_PAID
    assert await api.shop.orders.recover_stuck() == 0  # not stuck yet: a retry may be under way
    payments_peer.down = set()
    _stuck_long_enough(api, clock)
    assert await api.shop.orders.recover_stuck() == 1
    shipped = await _order(api, order)
    assert (shipped["status"], shipped["tracking"]) == ("shipped", "JP1")
    # Points were captured once (the job did not ask again); the card with the key the merchant's try used.
    assert points_peer.calls.count("Capture") == 1
    assert [k for k in payments_peer.keys if "capture" in k] == [f"{order}:capture-card"]
    assert [h.state for h in points_peer.holds.values()] == ["captured"]
    assert [a.state for a in payments_peer.auths.values()] == ["captured"]
    assert await _published(api, order, "shop.order.shipped") == 1
    assert await api.shop.orders.recover_stuck() == 0


async def test_a_shipment_whose_card_hold_lapsed_cancels_the_order_and_returns_the_points(
    api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer
) -> None:
    merchant, product, order = await _paid_order(api, points_peer, payments_peer)
    [authorization] = payments_peer.auths.values()
    authorization.state = "expired"  # fintech let the hold lapse
    ship = await api.call("POST", f"/api/merchants/{merchant}/orders/{order}/ship", OWNER, {"tracking": "JP2"})
    assert ship.status_code == 409, ship.text
    assert "could not be shipped" in ship.json()["message"] and "cancelled" in ship.json()["message"]
    cancelled = await _order(api, order)
    assert cancelled["status"] == "cancelled" and "authorization is expired" in str(cancelled["problem"])
    # The points captured before the card failed went back; nothing is held; the stock is back.
    [hold] = points_peer.holds.values()
    assert (hold.state, hold.refunded, points_peer.balances[BUYER]) == ("captured", 300, 500)
    assert payments_peer.open_holds() == 0 and payments_peer.calls.count("Void") == 1
    assert await api.stock(product) == 5
    assert await _published(api, order, "shop.order.cancelled") == 1
    again = await api.call("POST", f"/api/merchants/{merchant}/orders/{order}/ship", OWNER, {})
    assert again.status_code == 409 and "it is cancelled" in again.json()["message"]


async def test_a_cancel_cut_short_by_a_points_outage_is_finished_by_the_job(
    api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer
) -> None:
    clock = api.runtime.clock = FrozenClock()
    _, product, order = await _paid_order(api, points_peer, payments_peer)
    points_peer.down = {"Void"}
    cancel = await api.call("POST", f"/api/orders/{order}/cancel", BUYER)
    assert cancel.status_code == 503 and "points" in cancel.json()["message"], cancel.text
    assert (await _order(api, order))["status"] == "cancelling"
    assert payments_peer.open_holds() == 0 and points_peer.open_holds() == 1
    _stuck_long_enough(api, clock)
    assert await api.shop.orders.recover_stuck() == 1  # points still away: tried, still cancelling
    assert (await _order(api, order))["status"] == "cancelling"
    points_peer.down = set()
    _stuck_long_enough(api, clock)
    assert await api.shop.orders.recover_stuck() == 1
    assert (await _order(api, order))["status"] == "cancelled"
    assert points_peer.open_holds() == 0 and points_peer.balances[BUYER] == 500
    assert payments_peer.limits[BUYER] == 100_000 and await api.stock(product) == 5
    assert await _published(api, order, "shop.order.cancelled") == 1


async def test_a_refund_cut_short_then_refused_is_visible_and_retried_without_refunding_twice(
    api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer
) -> None:
    clock = api.runtime.clock = FrozenClock()
    merchant, _, order = await _paid_order(api, points_peer, payments_peer)
    await api.ok("POST", f"/api/merchants/{merchant}/orders/{order}/ship", OWNER, {})
    payments_peer.down = {"Refund"}
    refund = await api.call("POST", f"/api/merchants/{merchant}/orders/{order}/refund", OWNER)
    assert refund.status_code == 503, refund.text
    assert (await _order(api, order))["status"] == "refunding"
    assert points_peer.balances[BUYER] == 500  # the points half is done
    # The job finds fintech back but refusing: the order shows it, with the reason.
    payments_peer.down, payments_peer.refuse = set(), {"Refund"}
    _stuck_long_enough(api, clock)
    assert await api.shop.orders.recover_stuck() == 1
    failed = await _order(api, order)
    assert failed["status"] == "refund_failed" and "Refund refused" in str(failed["problem"])
    # Resolved: the merchant refunds again; the points are not refunded a second time.
    payments_peer.refuse = set()
    done = await api.ok("POST", f"/api/merchants/{merchant}/orders/{order}/refund", OWNER)
    assert (done["status"], done["problem"]) == ("refunded", "")
    assert points_peer.calls.count("Refund") == 1 and points_peer.balances[BUYER] == 500
    [authorization] = payments_peer.auths.values()
    assert authorization.refunded == 700 and payments_peer.limits[BUYER] == 100_000
    assert await _published(api, order, "shop.order.refunded") == 1
