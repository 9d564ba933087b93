"""The shop against the REAL points service (a `python -m points` process) over real gRPC and NATS.

Fintech's PaymentsService is not served by fintech yet, so the card side is the in-test
PaymentsPeer (the real generated interface on a real gRPC server). Points is real: its balance,
reservations, and its earning from the shop's order events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.kit.auth import call_metadata
from kizuna.kit.testing import TestIssuer
from kizuna.points.v1 import points_pb2 as ppb
from kizuna.points.v1 import points_pb2_grpc
from shop_peers import PaymentsPeer, serve_payments
from shop_support import ShopApi, reset_streams, running_shop, shop_api, wait_until

BUYER = "mbr_realbuyer"


class RealPoints:
    def __init__(self, address: str, issuer: TestIssuer) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = points_pb2_grpc.PointsServiceStub(self.channel)
        self.issuer = issuer

    def _md(self, scope: str) -> Any:
        return call_metadata(self.issuer.service_token("shop", scope))

    async def balance(self, member: str) -> ppb.GetBalanceResponse:
        return await self.stub.GetBalance(ppb.GetBalanceRequest(member_id=member), metadata=self._md("points:read"),
                                          timeout=5)

    async def credit(self, member: str, amount: int) -> None:
        request = ppb.CreditRequest(member_id=member, amount=amount, kind=ppb.CREDIT_KIND_REGULAR,
                                    reason="welcome", source_service="shop", source_ref="welcome",
                                    idempotency_key=f"welcome-{member}")

        async def done() -> bool:
            try:
                await self.stub.Credit(request, metadata=self._md("points:credit"), timeout=5)
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                    return False  # the member's registration event is still on its way
                raise

        await wait_until(done, timeout=20)


async def register_member(nats_url: str, member: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        ts = Timestamp()
        ts.FromDatetime(datetime.now(UTC))
        event_id = f"evt_register_{member}"
        await nc.jetstream().publish(
            "identity.member.registered",
            identity.MemberRegistered(member_id=member, display_name=member, registered_at=ts).SerializeToString(),
            headers={"Nats-Msg-Id": event_id, "ce-id": event_id, "ce-subject": member,
                     "ce-source": "kizuna/identity"})
    finally:
        await nc.close()


@pytest.fixture
async def world(nats_url: str, database_url: str, test_issuer: TestIssuer, service_process: Any
                ) -> AsyncIterator[tuple[ShopApi, RealPoints, PaymentsPeer]]:
    await reset_streams(nats_url, "SHOP", "IDENTITY", "POINTS")
    points_proc = service_process("points", env={"KIZUNA_ISSUER": test_issuer.issuer, "OUTBOX_POLL_SECONDS": "0.2"})
    points = RealPoints(points_proc.grpc_address, test_issuer)
    payments = PaymentsPeer(limits={BUYER: 100_000})
    payments_server, payments_addr = await serve_payments(payments, test_issuer.issuer)
    await register_member(nats_url, BUYER)
    await points.credit(BUYER, 1000)
    try:
        async with running_shop(nats_url=nats_url, database_url=database_url, issuer=test_issuer,
                                points_addr=points_proc.grpc_address, fintech_addr=payments_addr) as runtime, \
                shop_api(runtime, test_issuer) as api:
            yield api, points, payments
    finally:
        await payments_server.stop(0)
        await points.channel.close()


async def _buy(api: ShopApi, *, points: int, price: int = 10_000, stock: int = 3) -> tuple[str, str, str]:
    merchant = await api.active_merchant("mbr_owner")
    product = await api.product(merchant, "mbr_owner", price=price, stock=stock)
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})
    resp = await api.checkout(BUYER, points=points)
    assert resp.status_code == 200, resp.text
    return merchant, product, resp.json()["order_id"]


async def test_points_and_card_end_to_end_and_order_events_earn_exactly_once(world: Any) -> None:
    api, points, payments = world
    merchant, _, order = await _buy(api, points=400)
    after = await points.balance(BUYER)
    assert (after.total, after.pending) == (600, 400)
    assert payments.open_holds() == 1 and payments.auths[next(iter(payments.auths))].amount == 9_600
    # shop.order.paid -> points shows the earning as pending, once.
    earning = (await wait_until(lambda: _earning(points))).earning
    assert earning > 0
    await api.ok("POST", f"/api/merchants/{merchant}/orders/{order}/ship", "mbr_owner", {})
    shipped = await points.balance(BUYER)
    assert (shipped.total, shipped.pending) == (600, 0)  # the reservation was captured
    await api.ok("POST", f"/api/orders/{order}/confirm-delivery", BUYER)
    granted = await wait_until(lambda: _total_at_least(points, 600 + earning))
    assert (granted.total, granted.earning) == (600 + earning, 0)
    # Re-delivering the shop's events changes nothing: each takes effect once.
    await _republish_shop_events(api)
    await _quiet(points, granted.total)


async def test_declined_card_leaves_no_points_reservation(world: Any) -> None:
    api, points, payments = world
    payments.limits[BUYER] = 100
    merchant = await api.active_merchant("mbr_owner")
    product = await api.product(merchant, "mbr_owner", price=5_000, stock=3)
    await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 2})
    resp = await api.checkout(BUYER, points=500)
    assert resp.status_code == 409 and resp.json()["error"] == "card_declined"
    balance = await points.balance(BUYER)
    assert (balance.total, balance.pending) == (1000, 0)
    assert await api.stock(product) == 3
    too_many = await api.checkout(BUYER, points=1001)
    assert too_many.status_code == 409 and "balance" in too_many.json()["message"]


async def test_cancel_returns_points_and_refund_claws_back_earning_once(world: Any) -> None:
    api, points, _ = world
    _, _, first = await _buy(api, points=300)
    await wait_until(lambda: _earning(points))
    await api.ok("POST", f"/api/orders/{first}/cancel", BUYER)
    cancelled = await wait_until(lambda: _no_earning(points))
    assert (cancelled.total, cancelled.pending, cancelled.earning) == (1000, 0, 0)

    merchant, _, second = await _buy(api, points=0)
    earning = (await wait_until(lambda: _earning(points))).earning
    await api.ok("POST", f"/api/merchants/{merchant}/orders/{second}/ship", "mbr_owner", {})
    await api.ok("POST", f"/api/orders/{second}/confirm-delivery", BUYER)
    await wait_until(lambda: _total_at_least(points, 1000 + earning))
    await api.ok("POST", f"/api/merchants/{merchant}/orders/{second}/refund", "mbr_owner")

    async def clawed() -> Any:
        b = await points.balance(BUYER)
        return b if b.total == 1000 else None

    await wait_until(clawed)
    await _republish_shop_events(api)
    await _quiet(points, 1000)


async def _earning(points: RealPoints) -> Any:
    b = await points.balance(BUYER)
    return b if b.earning > 0 else None


async def _no_earning(points: RealPoints) -> Any:
    b = await points.balance(BUYER)
    return b if b.earning == 0 and b.pending == 0 else None


async def _total_at_least(points: RealPoints, total: int) -> Any:
    b = await points.balance(BUYER)
    return b if b.total >= total else None


async def _republish_shop_events(api: ShopApi) -> None:
    """Publish every shop event again as a redelivery would (same event id, new NATS message id)."""
    nc = await nats.connect(api.runtime.settings.nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("SHOP")
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("SHOP", seq)
            headers = dict(msg.headers or {})
            headers["Nats-Msg-Id"] = f"{headers.get('ce-id')}-again"
            await js.publish(msg.subject, msg.data or b"", headers=headers)
    finally:
        await nc.close()


async def _quiet(points: RealPoints, total: int) -> None:
    """The balance stays at `total` while the re-published events are consumed."""
    import asyncio

    for _ in range(20):
        await asyncio.sleep(0.1)
        assert (await points.balance(BUYER)).total == total
