"""Checkout journeys end to end over real gRPC to the REAL points and fintech services.

Points holds, captures, voids, refunds and earns; fintech authorizes, declines, captures, voids
and refunds the card. The shop runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from kizuna.kit.auth import call_metadata
from kizuna.kit.clock import FrozenClock
from kizuna.kit.testing import wait_until
from kizuna.points.v1 import points_pb2 as ppb
from kizuna.shop.v1 import events_pb2, shop_pb2, shop_pb2_grpc

from services.shop.tests.shop_support import ADMIN, shop_events

from .shop_world import ShopWorld, republish_shop_events

OWNER = "mbr_owner"


async def _product(w: ShopWorld, *, price: int = 10_000, stock: int = 3) -> tuple[str, str]:
    merchant = await w.api.active_merchant(OWNER)
    return merchant, await w.api.product(merchant, OWNER, price=price, stock=stock)


async def _buy(w: ShopWorld, buyer: str, product: str, *, points: int, quantity: int = 1) -> str:
    await w.api.ok("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": quantity})
    resp = await w.api.checkout(buyer, points=points)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["order_id"])


async def _order_events(w: ShopWorld, order_id: str, n: int) -> list[tuple[str, bytes]]:
    async def found() -> list[tuple[str, bytes]] | None:
        mine = [
            (s, d)
            for s, d in await shop_events(w.api.runtime.settings.nats_url)
            if s.startswith("shop.order.") and events_pb2.OrderPaid.FromString(d).order_id == order_id
        ]
        return mine if len(mine) >= n else None

    result: list[tuple[str, bytes]] = await wait_until(found)
    return result


async def test_points_and_card_end_to_end_then_ship_confirm_and_earn_exactly_once(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=1000)
    merchant, product = await _product(w)
    order = await _buy(w, buyer, product, points=400)
    # Points reserved 400 of 1000; fintech holds the other 9,600 JPY on the card.
    after = await w.balance(buyer)
    assert (after.total, after.pending) == (600, 400)
    assert (await w.card(buyer))["held_minor"] == 9_600
    assert await w.api.stock(product) == 2
    body = await w.api.ok("GET", f"/api/orders/{order}", buyer)
    assert body["status"] == "paid" and body["commission"] == {"amount_minor": 500, "currency": "JPY"}
    # shop.order.paid -> points shows the earning as pending.
    earning = (await wait_until(lambda: _with(w, buyer, lambda b: b.earning > 0))).earning
    # The merchant ships: both are captured (the card now owes 9,600, nothing held). The card
    # purchase earns points of its own through fintech, so the shop's part is read from the ledger.
    await w.api.ok("POST", f"/api/merchants/{merchant}/orders/{order}/ship", OWNER, {"tracking": "JP123"})
    assert (await w.balance(buyer)).pending == 0 and await w.shop_net(buyer) == -400
    card = await w.card(buyer)
    assert (card["held_minor"], card["owed_minor"]) == (0, 9_600)
    # Delivery confirmed: the earned points are granted, once.
    await w.api.ok("POST", f"/api/orders/{order}/confirm-delivery", buyer)
    await wait_until(lambda: _net_is(w, buyer, -400 + earning))
    assert (await w.balance(buyer)).earning == 0
    events = await _order_events(w, order, 3)
    assert [s for s, _ in events] == ["shop.order.paid", "shop.order.shipped", "shop.order.completed"]
    republished = await republish_shop_events(w.api.runtime.settings.nats_url)
    await w.acknowledged_by_points(republished)
    assert await w.shop_net(buyer) == -400 + earning


async def test_declined_card_leaves_no_reservation_and_stock_intact(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=1000, income=1_000_000)  # the smallest card: 100,000 JPY
    _, product = await _product(w, price=80_000, stock=3)
    await w.api.ok("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": 2})
    resp = await w.api.checkout(buyer, points=500, key="k1")
    assert resp.status_code == 409 and resp.json()["error"] == "card_declined", resp.text
    assert "DECLINE_REASON_LIMIT" in resp.json()["message"]
    balance = await w.balance(buyer)
    assert (balance.total, balance.pending) == (1000, 0)  # the reservation was voided
    assert (await w.card(buyer))["held_minor"] == 0
    assert await w.api.stock(product) == 3
    assert await w.api.ok("GET", "/api/orders", buyer) == []
    assert len((await w.api.ok("GET", "/api/cart", buyer))["items"]) == 1  # the cart stays for another try
    again = await w.api.checkout(buyer, points=500, key="k1")  # remembered: same answer, nothing moves
    assert again.status_code == 409 and again.json()["error"] == "card_declined"
    assert ((b := await w.balance(buyer)).total, b.pending) == (1000, 0)
    # A member without a card is refused by fintech, and nothing is held either.
    no_card = await w.member(points=300, income=None)
    await w.api.ok("PUT", "/api/cart/items", no_card, {"product_id": product, "quantity": 1})
    refused = await w.api.checkout(no_card, points=300 - 1)
    assert refused.status_code in (404, 409) and "fintech" in refused.json()["message"], refused.text
    assert ((b := await w.balance(no_card)).total, b.pending) == (300, 0)
    assert await w.api.stock(product) == 3


async def test_concurrent_checkouts_of_the_last_unit_make_exactly_one_order(world: ShopWorld) -> None:
    w = world
    _, product = await _product(w, price=5_000, stock=1)
    buyers = list(await asyncio.gather(*(w.member(points=200) for _ in range(4))))
    for buyer in buyers:
        await w.api.ok("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": 1})
    results = await asyncio.gather(*(w.api.checkout(b, points=100) for b in buyers))
    assert sorted(r.status_code for r in results) == [200, 409, 409, 409], [r.text for r in results]
    assert {r.json()["error"] for r in results if r.status_code == 409} == {"out_of_stock"}
    assert await w.api.stock(product) == 0
    assert sum([len(await w.api.ok("GET", "/api/orders", b)) for b in buyers]) == 1
    # Only the winner holds anything on points and on the card.
    pending = sorted([(await w.balance(b)).pending for b in buyers])
    held = sorted([(await w.card(b))["held_minor"] for b in buyers])
    assert (pending, held) == ([0, 0, 0, 100], [0, 0, 0, 4_900])


async def test_cancel_and_refund_return_points_and_money_and_claw_back_once(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=1000)
    merchant, product = await _product(w, stock=5)
    first = await _buy(w, buyer, product, points=300)
    await wait_until(lambda: _with(w, buyer, lambda b: b.earning > 0))
    cancelled = await w.api.ok("POST", f"/api/orders/{first}/cancel", buyer)
    assert cancelled["status"] == "cancelled" and await w.api.stock(product) == 5
    back = await wait_until(lambda: _with(w, buyer, lambda b: b.earning == 0 and b.pending == 0))
    assert back.total == 1000 and (await w.card(buyer))["held_minor"] == 0
    assert (await w.api.call("POST", f"/api/orders/{first}/cancel", buyer)).status_code == 409

    second = await _buy(w, buyer, product, points=200)
    earning = (await wait_until(lambda: _with(w, buyer, lambda b: b.earning > 0))).earning
    await w.api.ok("POST", f"/api/merchants/{merchant}/orders/{second}/ship", OWNER, {})
    assert (await w.card(buyer))["owed_minor"] == 9_800
    await w.api.ok("POST", f"/api/orders/{second}/confirm-delivery", buyer)
    await wait_until(lambda: _net_is(w, buyer, -200 + earning))
    refunded = await w.api.ok("POST", f"/api/merchants/{merchant}/orders/{second}/refund", OWNER)
    assert refunded["status"] == "refunded"
    # The 200 points come back, the earned points go (once), the card owes nothing.
    await wait_until(lambda: _net_is(w, buyer, 0))
    assert (await w.card(buyer))["owed_minor"] == 0
    assert (await w.api.call("POST", f"/api/merchants/{merchant}/orders/{second}/refund", OWNER)).status_code == 409
    events = await _order_events(w, second, 4)
    refund = events_pb2.OrderRefunded.FromString(events[-1][1])
    assert (refund.refunded.amount_minor, refund.points_refunded) == (9_800, 200)
    republished = await republish_shop_events(w.api.runtime.settings.nats_url)
    await w.acknowledged_by_points(republished)
    assert await w.shop_net(buyer) == 0


async def test_bad_input_gets_a_clear_error_and_changes_nothing(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=500)
    merchant, product = await _product(w, price=1000, stock=5)
    for qty in (0, -1):
        resp = await w.api.call("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": qty})
        assert resp.status_code == 400 and "quantity must be at least 1" in resp.json()["message"]
    resp = await w.api.call("PUT", "/api/cart/items", buyer, {"product_id": "prd_nope", "quantity": 1})
    assert resp.status_code == 404 and "prd_nope" in resp.json()["message"]
    resp = await w.api.call("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": 6})
    assert resp.status_code == 409 and "only 5" in resp.json()["message"]
    assert (await w.api.ok("GET", "/api/cart", buyer))["items"] == []
    await w.api.ok("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": 1})
    # More points than the real balance (500), more than the total (1000), negative.
    for points, status, words in [(600, 409, "balance"), (1001, 400, "total"), (-1, 400, "negative")]:
        resp = await w.api.checkout(buyer, points=points)
        assert resp.status_code == status and words in resp.json()["message"], resp.text
    # An inactive merchant's products cannot be bought or added.
    await w.api.ok("POST", f"/api/admin/merchants/{merchant}/suspend", ADMIN)
    resp = await w.api.checkout(buyer, points=0)
    assert resp.status_code == 409 and "not active" in resp.json()["message"]
    resp = await w.api.call("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": 2})
    assert resp.status_code == 409 and "not active" in resp.json()["message"]
    assert ((b := await w.balance(buyer)).total, b.pending) == (500, 0)
    assert (await w.card(buyer))["held_minor"] == 0
    # Nothing was recorded either: the member's data at the shop holds no checkout.
    export = await w.api.http.get(
        f"/privacy/members/{buyer}/export",
        headers={"authorization": f"Bearer {w.issuer.service_token('identity', 'privacy:export')}"},
    )
    assert export.status_code == 200 and export.json()["data"]["checkouts"] == [], export.text
    await w.api.ok("POST", f"/api/admin/merchants/{merchant}/reinstate", ADMIN)
    assert await w.api.stock(product) == 5


async def test_same_key_same_result_other_input_conflict(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=500)
    _, product = await _product(w, price=1000)
    await w.api.ok("PUT", "/api/cart/items", buyer, {"product_id": product, "quantity": 1})
    first, second = [await w.api.checkout(buyer, points=100, key="same") for _ in range(2)]
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    assert ((b := await w.balance(buyer)).total, b.pending) == (400, 100)  # reserved once
    assert (await w.card(buyer))["held_minor"] == 900  # authorized once
    conflict = await w.api.checkout(buyer, points=50, key="same")
    assert conflict.status_code == 409 and conflict.json()["error"] == "already_exists"


async def test_shipped_orders_complete_after_n_days(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=0)
    merchant, product = await _product(w, price=2000)
    clock = w.api.runtime.clock = FrozenClock()
    order = await _buy(w, buyer, product, points=0)
    await w.api.ok("POST", f"/api/merchants/{merchant}/orders/{order}/ship", OWNER, {})
    shop = w.api.shop
    assert await shop.orders.auto_complete() == 0
    clock.advance(timedelta(days=shop.settings.auto_complete_days, minutes=1))
    assert await shop.orders.auto_complete() == 1
    assert (await w.api.ok("GET", f"/api/orders/{order}", buyer))["status"] == "completed"


async def test_campaign_bonus_and_shop_service_for_members_and_authorized_services(world: ShopWorld) -> None:
    w = world
    buyer = await w.member(points=0)
    merchant, product = await _product(w, price=2000, stock=5)
    now = w.api.shop.clock.now()
    await w.api.ok(
        "POST",
        f"/api/merchants/{merchant}/campaigns",
        OWNER,
        {
            "name": "Tea week x5",
            "extra_bp": 500,
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(days=7)).isoformat(),
            "product_id": product,
        },
    )
    order = await _buy(w, buyer, product, points=0, quantity=2)
    placed = await w.api.ok("GET", f"/api/orders/{order}", buyer)
    assert placed["merchant_bonus_points"] == 200
    # The merchant funds the bonus: ¥4,000 less the 5% commission and the 200 points' ¥200.
    books = await w.api.ok("GET", f"/api/merchants/{merchant}/orders", OWNER)
    assert [(o["id"], o["campaign_cost"]["amount_minor"], o["merchant_payout"]["amount_minor"]) for o in books] == [
        (order, 200, 3_600)
    ]
    paid = events_pb2.OrderPaid.FromString((await _order_events(w, order, 1))[0][1])
    assert (paid.merchant_bonus_points, paid.commission.amount_minor) == (200, 200)
    # Completed, the order's earnings are granted in points, the merchant's bonus among them, once,
    # even when every shop event is delivered again.
    await w.api.ok("POST", f"/api/merchants/{merchant}/orders/{order}/ship", OWNER, {})
    await w.api.ok("POST", f"/api/orders/{order}/confirm-delivery", buyer)
    assert [e.amount for e in await wait_until(lambda: _bonus_entries(w, buyer, order))] == [200]
    republished = await republish_shop_events(w.api.runtime.settings.nats_url)
    await w.acknowledged_by_points(republished)
    assert [e.amount for e in await _bonus_entries(w, buyer, order)] == [200]
    bad = await w.api.call(
        "POST",
        "/api/merchants/mch_unknown/campaigns",
        OWNER,
        {"name": "x", "extra_bp": 100, "starts_at": "2025-01-01T00:00:00Z", "ends_at": "2025-02-01T00:00:00Z"},
    )
    assert bad.status_code == 404
    async with grpc.aio.insecure_channel(f"127.0.0.1:{w.api.runtime.grpc_port}") as channel:
        stub = shop_pb2_grpc.ShopServiceStub(channel)
        service_md = call_metadata(w.issuer.service_token("travel", "shop:read"))
        got = await stub.GetOrder(shop_pb2.GetOrderRequest(order_id=order), metadata=service_md, timeout=5)
        assert got.order.status == shop_pb2.ORDER_STATUS_COMPLETED and got.order.total.amount_minor == 4000
        assert got.order.lines[0].quantity == 2 and got.order.merchant_bonus_points == 200
        mine = await stub.ListMemberOrders(
            shop_pb2.ListMemberOrdersRequest(member_id=buyer), metadata=call_metadata(w.api.token(buyer)), timeout=5
        )
        assert [o.order_id for o in mine.orders] == [order]
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.GetOrder(
                shop_pb2.GetOrderRequest(order_id=order),
                metadata=call_metadata(w.api.token("mbr_someone_else")),
                timeout=5,
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.GetOrder(shop_pb2.GetOrderRequest(order_id="ord_nope"), metadata=service_md, timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        no_scope = call_metadata(w.issuer.service_token("travel", "points:read"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListMemberOrders(shop_pb2.ListMemberOrdersRequest(member_id=buyer), metadata=no_scope, timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def _with(w: ShopWorld, member: str, check: Any) -> Any:
    b = await w.balance(member)
    return b if check(b) else None


async def _net_is(w: ShopWorld, member: str, net: int) -> bool:
    return await w.shop_net(member) == net


async def _bonus_entries(w: ShopWorld, member: str, order: str) -> list[ppb.Entry]:
    """The member's ledger entries crediting the merchant's campaign bonus on `order`, as points shows them."""
    return [
        e
        for e in await w.entries(member)
        if e.source_ref == order
        and e.kind == ppb.ENTRY_KIND_CREDIT
        and e.explanation.startswith("Merchant campaign bonus")
    ]


async def test_a_paid_order_not_shipped_by_its_deadline_is_cancelled_and_every_hold_released(world: ShopWorld) -> None:
    w = world
    settings = w.api.runtime.settings
    clock = w.api.runtime.clock = FrozenClock()
    buyer = await w.member(points=1000)
    merchant, product = await _product(w, stock=3)
    order = await _buy(w, buyer, product, points=400)
    placed = await w.api.ok("GET", f"/api/orders/{order}", buyer)
    ship_by = datetime.fromisoformat(placed["ship_by"])
    assert ship_by == clock.now() + timedelta(days=settings.ship_by_days)
    assert ship_by < clock.now() + timedelta(seconds=settings.points_hold_seconds)  # before the holds lapse
    await wait_until(lambda: _with(w, buyer, lambda b: b.earning > 0 and b.pending == 400))
    assert (await w.card(buyer))["held_minor"] == 9_600
    clock.set(ship_by - timedelta(minutes=1))
    assert await w.api.shop.orders.cancel_unshipped() == 0
    clock.set(ship_by)
    assert await w.api.shop.orders.cancel_unshipped() == 1
    cancelled = await w.api.ok("GET", f"/api/orders/{order}", buyer)
    assert cancelled["status"] == "cancelled" and "Not shipped by" in cancelled["problem"]
    # The points reservation and the card authorization are voided, the stock is back, the event is out.
    back = await wait_until(lambda: _with(w, buyer, lambda b: b.pending == 0 and b.earning == 0))
    assert back.total == 1000 and await w.shop_net(buyer) == 0
    assert (await w.card(buyer))["held_minor"] == 0
    assert await w.api.stock(product) == 3
    assert [s for s, _ in await _order_events(w, order, 2)] == ["shop.order.paid", "shop.order.cancelled"]
    late = await w.api.call("POST", f"/api/merchants/{merchant}/orders/{order}/ship", OWNER, {})
    assert late.status_code == 409 and "it is cancelled" in late.json()["message"]
    assert await w.api.shop.orders.cancel_unshipped() == 0
