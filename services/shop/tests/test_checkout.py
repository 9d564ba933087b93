"""Crash recovery of the checkout saga, against test peers.

Every checkout journey runs against the REAL points and fintech services (tests/shop/). This one
needs failure injection the real services cannot produce on demand: the shop dying between a
peer's answer and recording it, so the saga is driven step by step against scripted peers.
"""

from __future__ import annotations

from datetime import timedelta

from kizuna.kit.clock import FrozenClock
from shop.checkout import AUTHORIZED, STARTED
from shop.models import Checkout
from shop_peers import PaymentsPeer, PointsPeer
from shop_support import ShopApi
from sqlmodel import select

BUYER = "mbr_buyer"


async def test_recovery_finishes_or_compensates_checkouts_stuck_by_a_crash(
    api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer
) -> None:
    merchant = await api.active_merchant("mbr_owner")
    product = await api.product(merchant, "mbr_owner", price=1000, stock=5)
    points_peer.balances[BUYER] = 500
    payments_peer.limits[BUYER] = 100_000
    saga = api.shop.checkout
    clock = api.runtime.clock = FrozenClock()
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    # Crash 1: every hold in place, the order not yet written -> recovery finishes the order.
    held = await saga._begin(BUYER, None, 100, "crash-1")
    await saga._hold(held, api.token(BUYER))
    assert held.state == AUTHORIZED
    # Crash 2: points reserved and recorded, then the shop died before the card -> recovery voids.
    points_peer.balances["mbr_other"] = 300
    payments_peer.limits["mbr_other"] = 5_000
    await api.ok("PUT", "/api/cart/items", "mbr_other", {"product_id": product, "quantity": 1})
    started = await saga._begin("mbr_other", None, 300, "crash-2")
    assert started.state == STARTED
    started.reservation_id = await saga.points.reserve(
        member_id="mbr_other",
        amount=300,
        member_token=api.token("mbr_other"),
        ttl_seconds=600,
        reason="x",
        ref=started.order_id,
        key=f"{started.id}:reserve",
    )
    await saga._save(started, reservation_id=started.reservation_id)
    assert points_peer.open_holds() == 2 and payments_peer.open_holds() == 1
    assert await saga.recover_stuck() == 0  # not stuck yet
    clock.advance(timedelta(minutes=5))
    assert await saga.recover_stuck() == 2
    async with api.runtime.db.sessions() as session:
        states = {c.idempotency_key: c.state for c in (await session.exec(select(Checkout))).all()}
    assert states == {"crash-1": "completed", "crash-2": "failed"}
    assert [o["id"] for o in await api.ok("GET", "/api/orders", BUYER)] == [held.order_id]
    assert await api.ok("GET", "/api/orders", "mbr_other") == []
    # The winner's holds stay for shipping; the interrupted checkout's reservation was voided.
    assert points_peer.open_holds() == 1 and payments_peer.open_holds() == 1
    assert points_peer.balances["mbr_other"] == 300
    assert await api.stock(product) == 4
