"""Checkout as a saga over real gRPC to test peers implementing PointsService and PaymentsService."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from kizuna.shop.v1 import events_pb2
from shop_peers import PaymentsPeer, PointsPeer
from shop.checkout import AUTHORIZED, STARTED
from shop.models import Checkout
from sqlmodel import select
from shop_support import ADMIN, ShopApi, shop_events, wait_until

BUYER = "mbr_buyer"


async def _setup(api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer, *, stock: int = 5,
                 price: int = 1000, balance: int = 500, limit: int = 100_000) -> tuple[str, str]:
    merchant = await api.active_merchant("mbr_owner")
    product = await api.product(merchant, "mbr_owner", price=price, stock=stock)
    points_peer.balances[BUYER] = balance
    payments_peer.limits[BUYER] = limit
    return merchant, product


async def test_checkout_with_points_and_card_then_ship_and_confirm(api: ShopApi, points_peer: PointsPeer,
                                                                   payments_peer: PaymentsPeer,
                                                                   nats_url: str) -> None:
    merchant, product = await _setup(api, points_peer, payments_peer)
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 2})
    resp = await api.checkout(BUYER, points=300)
    assert resp.status_code == 200, resp.text
    checkout = resp.json()
    assert checkout["state"] == "completed"
    assert checkout["total"]["amount_minor"] == 2000 and checkout["card_amount"]["amount_minor"] == 1700
    order = await api.ok("GET", f"/api/orders/{checkout['order_id']}", BUYER)
    assert order["status"] == "paid" and order["points_used"] == 300
    assert order["commission"] == {"amount_minor": 100, "currency": "JPY"}  # 5% by default
    assert await api.stock(product) == 3
    assert points_peer.balances[BUYER] == 200 and points_peer.open_holds() == 1
    assert payments_peer.limits[BUYER] == 100_000 - 1700 and payments_peer.open_holds() == 1
    assert (await api.ok("GET", "/api/cart", BUYER))["items"] == []
    # The merchant ships: points and card are captured.
    shipped = await api.ok("POST", f"/api/merchants/{merchant}/orders/{order['id']}/ship", "mbr_owner",
                           {"tracking": "JP123"})
    assert shipped["status"] == "shipped"
    assert points_peer.open_holds() == 0 and payments_peer.open_holds() == 0
    assert [h.state for h in points_peer.holds.values()] == ["captured"]
    assert (await api.ok("POST", f"/api/orders/{order['id']}/confirm-delivery", BUYER))["status"] == "completed"
    events = await wait_until(lambda: _subjects(nats_url, 3))
    assert [s for s, _ in events] == ["shop.order.paid", "shop.order.shipped", "shop.order.completed"]
    paid = events_pb2.OrderPaid.FromString(events[0][1])
    assert (paid.order_id, paid.member_id, paid.merchant_id) == (order["id"], BUYER, merchant)
    assert (paid.total.amount_minor, paid.points_used, paid.card_amount.amount_minor) == (2000, 300, 1700)
    assert paid.commission.amount_minor == 100


async def _subjects(nats_url: str, n: int) -> list[tuple[str, bytes]] | None:
    events = await shop_events(nats_url)
    return events if len(events) >= n else None


async def test_declined_card_leaves_no_reservation_and_stock_intact(api: ShopApi, points_peer: PointsPeer,
                                                                   payments_peer: PaymentsPeer) -> None:
    _, product = await _setup(api, points_peer, payments_peer, limit=500)
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 2})
    resp = await api.checkout(BUYER, points=300, key="k1")
    assert resp.status_code == 409 and resp.json()["error"] == "card_declined", resp.text
    assert "DECLINE_REASON_LIMIT" in resp.json()["message"]
    assert points_peer.calls == ["Reserve", "Void"] and points_peer.open_holds() == 0
    assert points_peer.balances[BUYER] == 500
    assert await api.stock(product) == 5
    assert await api.ok("GET", "/api/orders", BUYER) == []
    assert len((await api.ok("GET", "/api/cart", BUYER))["items"]) == 1  # the cart stays for another try
    # The rejected attempt is remembered: the same key gets the same answer and moves nothing.
    again = await api.checkout(BUYER, points=300, key="k1")
    assert again.status_code == 409 and again.json()["error"] == "card_declined"
    assert points_peer.calls == ["Reserve", "Void"]


async def test_concurrent_checkouts_of_the_last_unit_make_exactly_one_order(
        api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer) -> None:
    _, product = await _setup(api, points_peer, payments_peer, stock=1)
    buyers = [f"mbr_buyer{i}" for i in range(6)]
    for buyer in buyers:
        points_peer.balances[buyer] = 100
        payments_peer.limits[buyer] = 10_000
        await api.ok("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": 1})
    results = await asyncio.gather(*(api.checkout(b, points=100) for b in buyers))
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [409] * 5, [r.text for r in results]
    assert {r.json()["error"] for r in results if r.status_code == 409} == {"out_of_stock"}
    assert await api.stock(product) == 0
    orders = [o for b in buyers for o in await api.ok("GET", "/api/orders", b)]
    assert len(orders) == 1
    # Every loser's holds were released; only the winner's remain.
    assert points_peer.open_holds() == 1 and payments_peer.open_holds() == 1
    assert sorted(points_peer.balances[b] for b in buyers) == [0] + [100] * 5


async def test_cancel_before_shipping_voids_and_restocks_refund_after_returns_all(
        api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer, nats_url: str) -> None:
    merchant, product = await _setup(api, points_peer, payments_peer)
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    first = (await api.checkout(BUYER, points=200)).json()["order_id"]
    cancelled = await api.ok("POST", f"/api/orders/{first}/cancel", BUYER)
    assert cancelled["status"] == "cancelled"
    assert await api.stock(product) == 5
    assert points_peer.balances[BUYER] == 500 and payments_peer.limits[BUYER] == 100_000
    assert points_peer.open_holds() == 0 and payments_peer.open_holds() == 0
    again = await api.call("POST", f"/api/orders/{first}/cancel", BUYER)
    assert again.status_code == 409 and "cancelled" in again.json()["message"]

    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    second = (await api.checkout(BUYER, points=200)).json()["order_id"]
    await api.ok("POST", f"/api/merchants/{merchant}/orders/{second}/ship", "mbr_owner", {})
    assert (await api.call("POST", f"/api/orders/{second}/cancel", BUYER)).status_code == 409
    refunded = await api.ok("POST", f"/api/merchants/{merchant}/orders/{second}/refund", "mbr_owner")
    assert refunded["status"] == "refunded"
    assert points_peer.balances[BUYER] == 500 and payments_peer.limits[BUYER] == 100_000
    assert (await api.call("POST", f"/api/merchants/{merchant}/orders/{second}/refund", "mbr_owner")).status_code == 409
    events = await wait_until(lambda: _subjects(nats_url, 5))
    assert [s for s, _ in events] == ["shop.order.paid", "shop.order.cancelled", "shop.order.paid",
                                      "shop.order.shipped", "shop.order.refunded"]
    refund = events_pb2.OrderRefunded.FromString(events[-1][1])
    assert (refund.refunded.amount_minor, refund.points_refunded) == (800, 200)


async def test_bad_input_gets_a_clear_error_and_changes_nothing(api: ShopApi, points_peer: PointsPeer,
                                                                payments_peer: PaymentsPeer) -> None:
    merchant, product = await _setup(api, points_peer, payments_peer)
    for qty in (0, -1):
        resp = await api.call("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": qty})
        assert resp.status_code == 400 and "quantity must be at least 1" in resp.json()["message"]
    resp = await api.call("PUT", "/api/cart/items", BUYER, {"product_id": "prd_nope", "quantity": 1})
    assert resp.status_code == 404 and "prd_nope" in resp.json()["message"]
    resp = await api.call("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 6})
    assert resp.status_code == 409 and "only 5" in resp.json()["message"]
    assert (await api.ok("GET", "/api/cart", BUYER))["items"] == []
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    # More points than the balance (500), more than the total (1000), negative.
    for points, status, words in [(600, 409, "balance"), (1001, 400, "total"), (-1, 400, "negative")]:
        resp = await api.checkout(BUYER, points=points)
        assert resp.status_code == status and words in resp.json()["message"], resp.text
    # An inactive merchant's products cannot be bought or added.
    await api.ok("POST", f"/api/admin/merchants/{merchant}/suspend", ADMIN)
    resp = await api.checkout(BUYER, points=0)
    assert resp.status_code == 409 and "not active" in resp.json()["message"]
    resp = await api.call("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 2})
    assert resp.status_code == 409 and "not active" in resp.json()["message"]
    assert points_peer.calls == [] and payments_peer.calls == []
    assert points_peer.balances[BUYER] == 500
    async with api.runtime.db.sessions() as session:
        assert (await session.exec(select(Checkout))).all() == []
    await api.ok("POST", f"/api/admin/merchants/{merchant}/reinstate", ADMIN)
    assert await api.stock(product) == 5


async def test_same_key_same_result_other_input_conflict(api: ShopApi, points_peer: PointsPeer,
                                                         payments_peer: PaymentsPeer) -> None:
    _, product = await _setup(api, points_peer, payments_peer)
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    first = await api.checkout(BUYER, points=100, key="same")
    second = await api.checkout(BUYER, points=100, key="same")
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    assert points_peer.calls.count("Reserve") == 1 and payments_peer.calls.count("Authorize") == 1
    conflict = await api.checkout(BUYER, points=50, key="same")
    assert conflict.status_code == 409 and conflict.json()["error"] == "already_exists"


async def test_recovery_finishes_or_compensates_checkouts_stuck_by_a_crash(
        api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer) -> None:
    _, product = await _setup(api, points_peer, payments_peer)
    saga = api.shop.checkout
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    # Crash 1: every hold in place, the order not yet written.
    held = await saga._begin(BUYER, None, 100, "crash-1")
    await saga._hold(held, api.token(BUYER))
    assert held.state == AUTHORIZED
    # Crash 2: fintech authorized but the shop died before recording it (no points used).
    payments_peer.limits["mbr_other"] = 5_000
    await api.ok("PUT", "/api/cart/items", "mbr_other", {"product_id": product, "quantity": 1})
    started = await saga._begin("mbr_other", None, 0, "crash-2")
    assert started.state == STARTED
    await saga.payments.authorize(member_id="mbr_other", amount_minor=1000, currency="JPY",
                                  merchant_id=started.merchant_id, merchant_name="x", key=f"{started.id}:authorize")
    assert payments_peer.open_holds() == 2
    assert await saga.recover_stuck() == 0  # not stuck yet
    api.shop.clock.advance(timedelta(minutes=5))
    assert await saga.recover_stuck() == 2
    async with api.runtime.db.sessions() as session:
        states = {c.idempotency_key: c.state for c in (await session.exec(select(Checkout))).all()}
    assert states == {"crash-1": "completed", "crash-2": "failed"}
    assert [o["id"] for o in await api.ok("GET", "/api/orders", BUYER)] == [held.order_id]
    assert await api.ok("GET", "/api/orders", "mbr_other") == []
    assert payments_peer.open_holds() == 1 and payments_peer.limits["mbr_other"] == 5_000
    assert await api.stock(product) == 4


async def test_shipped_orders_complete_after_n_days(api: ShopApi, points_peer: PointsPeer,
                                                    payments_peer: PaymentsPeer) -> None:
    merchant, product = await _setup(api, points_peer, payments_peer)
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    order = (await api.checkout(BUYER)).json()["order_id"]
    await api.ok("POST", f"/api/merchants/{merchant}/orders/{order}/ship", "mbr_owner", {})
    assert await api.shop.orders.auto_complete() == 0
    api.shop.clock.advance(timedelta(days=api.shop.settings.auto_complete_days, minutes=1))
    assert await api.shop.orders.auto_complete() == 1
    assert (await api.ok("GET", f"/api/orders/{order}", BUYER))["status"] == "completed"
