"""A checkout cut short by the shop's own crash, finished or undone by the recovery job.

Every checkout journey runs against the REAL points and fintech services (tests/shop/). These need
what the real services cannot do on demand: the shop's process killed (SIGKILL) between a peer's
answer and the shop recording it, then started again on the same database. The shop runs as
`python -m shop`, the way production runs it; the peers answer in this process.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from kizuna.kit.testing import ServiceProcess, TestIssuer, end_process, wait_until

from .shop_peers import PaymentsPeer, PointsPeer, serve_payments, serve_points
from .shop_support import ADMIN, SHOP_SCOPES, SHOP_SECRET, ShopClient

OWNER = "mbr_owner"
BUYER = "mbr_buyer"
StartShop = Callable[[], ServiceProcess]


@pytest.fixture
async def start_shop(
    service_process: Any,
    test_issuer: TestIssuer,
    database_url: str,
    points_peer: PointsPeer,
    payments_peer: PaymentsPeer,
) -> AsyncIterator[Callable[[], Any]]:
    """Starts `python -m shop` on this test's database (again, after a crash), calling the test peers.
    Checkouts count as stuck after a second and the recovery job runs twice a second."""
    test_issuer.register_client("shop", SHOP_SECRET, SHOP_SCOPES)
    points_server, points_addr = await serve_points(points_peer, test_issuer.issuer)
    payments_server, payments_addr = await serve_payments(payments_peer, test_issuer.issuer)
    env = {
        "KIZUNA_ISSUER": test_issuer.issuer,
        "DATABASE_URL": database_url,
        "POINTS_ADDR": points_addr,
        "FINTECH_ADDR": payments_addr,
        "KIZUNA_CLIENT_SECRET": SHOP_SECRET,
        "SHOP_ADMINS": ADMIN,
        "CHECKOUT_STUCK_SECONDS": "1",
        "JOBS_INTERVAL_SECONDS": "0.5",
    }

    async def start() -> ServiceProcess:
        # Off the event loop: the peers answer on it while the shop starts (its job may call them).
        process: ServiceProcess = await asyncio.to_thread(service_process, "shop", env)
        return process

    try:
        yield start
    finally:
        await points_server.stop(0)
        await payments_server.stop(0)


@asynccontextmanager
async def shop_client(process: ServiceProcess, issuer: TestIssuer) -> AsyncIterator[ShopClient]:
    async with httpx.AsyncClient(base_url=process.url, timeout=30) as http:
        yield ShopClient(issuer, http)


def crash(process: ServiceProcess) -> Callable[[], None]:
    """Kill the shop's process at once (no shutdown, nothing flushed)."""

    def kill() -> None:
        assert process.process is not None
        end_process(process.process, sig=signal.SIGKILL)

    return kill


async def _cart_of_one(client: ShopClient) -> str:
    """An active merchant's ¥1,000 product (5 in stock), one of it in the buyer's cart."""
    merchant = await client.active_merchant(OWNER)
    product = await client.product(merchant, OWNER, price=1000, stock=5)
    await client.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    return product


async def test_a_crash_after_the_points_hold_voids_it_and_the_checkout_stays_failed(
    start_shop: Callable[[], Any], test_issuer: TestIssuer, points_peer: PointsPeer, payments_peer: PaymentsPeer
) -> None:
    points_peer.balances[BUYER] = 500
    payments_peer.limits[BUYER] = 100_000
    shop = await start_shop()
    async with shop_client(shop, test_issuer) as client:
        product = await _cart_of_one(client)
        # Points reserve 300 and the shop records it; fintech authorizes ¥700, then the shop dies
        # before the answer arrives.
        payments_peer.after["Authorize"] = crash(shop)
        with pytest.raises(httpx.HTTPError):
            await client.checkout(BUYER, points=300, key="crash-at-card")
    assert (points_peer.open_holds(), payments_peer.open_holds()) == (1, 1)
    shop.stop()

    shop = await start_shop()
    async with shop_client(shop, test_issuer) as client:
        # The job finds the checkout stuck: the reservation it recorded is voided, the points are back.
        await wait_until(lambda: _no_open_holds(points_peer), timeout=30)
        assert points_peer.balances[BUYER] == 500
        # The same request again gets the remembered failure; nothing is held again, no order exists.
        again = await client.checkout(BUYER, points=300, key="crash-at-card")
        assert again.status_code == 409 and "interrupted" in again.json()["message"], again.text
        assert points_peer.calls.count("Reserve") == 1 and payments_peer.calls.count("Authorize") == 1
        assert await client.ok("GET", "/api/orders", BUYER) == []
        assert await client.stock(product) == 5
        # The cart is still there for a new checkout.
        assert len((await client.ok("GET", "/api/cart", BUYER))["items"]) == 1
    # The card authorization the shop never heard of stays until fintech lets it lapse.
    assert payments_peer.open_holds() == 1


async def _no_open_holds(peer: PointsPeer) -> bool:
    return peer.open_holds() == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_crash_with_every_hold_in_place_is_finished_into_the_order(
    start_shop: Callable[[], Any],
    database_url: str,
    test_issuer: TestIssuer,
    points_peer: PointsPeer,
    payments_peer: PaymentsPeer,
) -> None:
    """PostgreSQL only: a row lock on the product holds the shop between recording `authorized` and
    writing the order, so the crash lands exactly there."""
    points_peer.balances[BUYER] = 500
    payments_peer.limits[BUYER] = 100_000
    shop = await start_shop()
    export = f"/privacy/members/{BUYER}/export"
    identity = {"authorization": f"Bearer {test_issuer.service_token('identity', 'privacy:export')}"}
    async with shop_client(shop, test_issuer) as client:
        product = await _cart_of_one(client)
        db = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            lock = db.transaction()
            await lock.start()
            await db.execute("SELECT 1 FROM shop_product WHERE id = $1 FOR UPDATE", product)
            placing = asyncio.create_task(client.checkout(BUYER, points=100, key="crash-at-order"))

            async def authorized() -> bool:
                found = (await client.http.get(export, headers=identity)).json()["data"]["checkouts"]
                return [c["state"] for c in found] == ["authorized"]

            await wait_until(authorized, timeout=30)
            crash(shop)()
            with pytest.raises(httpx.HTTPError):
                await placing
            await lock.rollback()
        finally:
            await db.close()
    shop.stop()
    assert (points_peer.open_holds(), payments_peer.open_holds()) == (1, 1)

    shop = await start_shop()
    async with shop_client(shop, test_issuer) as client:
        # The job finds every hold in place and writes the order; the holds stay for shipping.
        orders = await wait_until(lambda: _orders_of(client, BUYER), timeout=30)
        assert [(o["status"], o["points_used"], o["card_amount"]["amount_minor"]) for o in orders] == [
            ("paid", 100, 900)
        ]
        assert await client.stock(product) == 4
        assert (points_peer.open_holds(), payments_peer.open_holds()) == (1, 1)
        # The same request again answers with that order, holding nothing more.
        again = await client.ok("POST", "/api/checkout", BUYER, {"idempotency_key": "crash-at-order", "points": 100})
        assert again["order_id"] == orders[0]["id"] and again["state"] == "completed"
        assert points_peer.calls.count("Reserve") == 1 and payments_peer.calls.count("Authorize") == 1


async def _orders_of(client: ShopClient, member: str) -> list[dict[str, Any]] | None:
    orders: list[dict[str, Any]] = await client.ok("GET", "/api/orders", member)
    return orders or None
