"""Earning from domain events and points commands, through real NATS JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from google.protobuf.message import Message
from kizuna.common.v1 import common_pb2
from kizuna.fintech.v1 import events_pb2 as fintech
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.points.v1 import events_pb2 as points_events
from kizuna.points.v1 import points_pb2
from kizuna.shop.v1 import events_pb2 as shop
from kizuna.travel.v1 import events_pb2 as travel
from nats.js.api import ConsumerConfig
from pointskit import Points, key


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


async def emit(
    nats_url: str,
    subject: str,
    message: Message,
    *,
    event_id: str | None = None,
    msg_id: str | None = None,
    source: str = "",
) -> str:
    event_id = event_id or f"evt_{key()}"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = subject.split(".")[0].upper()
        try:
            await js.add_stream(name=stream, subjects=[f"{subject.split('.')[0]}.>"])
        except Exception:
            pass
        headers = {
            "Nats-Msg-Id": msg_id or event_id,
            "ce-id": event_id,
            "ce-source": source or f"kizuna/{subject.split('.')[0]}",
        }
        await js.publish(subject, message.SerializeToString(), headers=headers)
    finally:
        await nc.close()
    return event_id


def yen(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency="JPY")


async def test_purchases_earn_once_pending_then_granted_with_the_multiplier(points: Points, nats_url: str) -> None:
    await emit(nats_url, "identity.member.registered", identity.MemberRegistered(member_id="m"))
    card = fintech.CardPurchasePosted(purchase_id="p1", member_id="m", amount=yen(10_000))
    await emit(nats_url, "fintech.card_purchase.posted", card)

    async def total() -> int:
        return (await points.balance("m")).total

    assert await wait_until(lambda: _eq(total, 100))
    paid = shop.OrderPaid(order_id="o1", member_id="m", total=yen(10_000))
    event_id = await emit(nats_url, "shop.order.paid", paid)
    # The same event delivered again (past JetStream's de-duplication) takes effect once.
    await emit(nats_url, "shop.order.paid", paid, event_id=event_id, msg_id=f"{event_id}-again")

    async def earning() -> int:
        return (await points.balance("m")).earning

    assert await wait_until(lambda: _eq(earning, 200))  # 1% base + 1% for having used the card
    completed = shop.OrderCompleted(order_id="o1", member_id="m", total=yen(10_000))
    await emit(nats_url, "shop.order.completed", completed)
    await emit(nats_url, "shop.order.completed", completed)  # a second, distinct completion event
    assert await wait_until(lambda: _eq(total, 300))
    await asyncio.sleep(0.5)
    balance = await points.balance("m")
    assert (balance.total, balance.earning) == (300, 0)
    [shop_credit, card_credit] = (await points.entries("m")).entries
    assert shop_credit.explanation == "Earned at shop on o1: 1% base + 1% for using card this month"
    assert card_credit.explanation == "Earned at card on p1: 1% base"

    refunded = shop.OrderRefunded(order_id="o1", member_id="m", total=yen(10_000), refunded=yen(5_000))
    await emit(nats_url, "shop.order.refunded", refunded)
    assert await wait_until(lambda: _eq(total, 200))

    credited = await _ledger_events(nats_url, "points.ledger.credited")
    assert sorted(points_events.Credited.FromString(m.data).amount for m in credited) == [100, 200]


async def test_cancelled_before_completion_earns_nothing(points: Points, nats_url: str) -> None:
    await points.register("m")
    await emit(nats_url, "shop.order.paid", shop.OrderPaid(order_id="o2", member_id="m", total=yen(50_000)))

    async def earning() -> int:
        return (await points.balance("m")).earning

    assert await wait_until(lambda: _eq(earning, 500))
    await emit(nats_url, "shop.order.cancelled", shop.OrderCancelled(order_id="o2", member_id="m", total=yen(50_000)))
    assert await wait_until(lambda: _eq(earning, 0))
    assert (await points.balance("m")).total == 0


async def test_credit_command_is_applied_once_and_bad_ones_are_rejected(points: Points, nats_url: str) -> None:
    await points.register("m")
    command = points_events.CreditRequested(
        idempotency_key="k1",
        member_id="m",
        amount=7,
        kind=points_pb2.CREDIT_KIND_REGULAR,
        reason="welcome",
        source_service="shop",
    )
    await emit(nats_url, "points.credit.requested", command, source="kizuna/shop")
    await emit(nats_url, "points.credit.requested", command, source="kizuna/shop")  # a retry, new event id
    forged = points_events.CreditRequested(
        idempotency_key="k2", member_id="m", amount=1000, kind=points_pb2.CREDIT_KIND_REGULAR, source_service="shop"
    )
    await emit(nats_url, "points.credit.requested", forged, source="kizuna/travel")
    # No kind: refused as PointsService.Credit refuses it, not taken for regular points.
    kindless = points_events.CreditRequested(idempotency_key="k3", member_id="m", amount=5, source_service="shop")
    await emit(nats_url, "points.credit.requested", kindless, source="kizuna/shop")

    async def rejected() -> list[Any]:
        found = await _ledger_events(nats_url, "points.command.rejected")
        return found if len(found) >= 2 else []

    rejections = [points_events.CommandRejected.FromString(m.data) for m in await wait_until(rejected)]
    assert sorted((r.idempotency_key, r.reason) for r in rejections) == [
        ("k2", points_events.REJECTION_REASON_NOT_AUTHORIZED),
        ("k3", points_events.REJECTION_REASON_INVALID_ARGUMENT),
    ]
    assert (await points.balance("m")).total == 7
    credited = [
        points_events.Credited.FromString(m.data) for m in await _ledger_events(nats_url, "points.ledger.credited")
    ]
    assert [(c.idempotency_key, c.amount, c.kind) for c in credited] == [("k1", 7, points_pb2.CREDIT_KIND_REGULAR)]
    assert [e.explanation for e in (await points.entries("m")).entries] == ["welcome"]


async def _eq(fn: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    return bool((await fn()) == expected)


async def _ledger_events(nats_url: str, subject: str) -> list[Any]:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(subject, config=ConsumerConfig(inactive_threshold=5))
        try:
            return list(await sub.fetch(100, timeout=1))
        except nats.errors.TimeoutError:
            return []
    finally:
        await nc.close()


async def test_order_paid_partly_with_points_earns_on_card_money_and_a_full_refund_takes_it_all_back(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    order = {
        "order_id": "o3",
        "member_id": "m",
        "total": yen(10_000),
        "points_used": 4_000,
        "card_amount": yen(6_000),
        "merchant_bonus_points": 50,
    }
    await emit(nats_url, "shop.order.paid", shop.OrderPaid(**order))

    async def balance() -> Any:
        return await points.balance("m")

    # 1% of the 6,000 paid by card, plus the merchant's 50 (nothing on the 4,000 paid in points).
    assert (await wait_until(lambda: _eq(lambda: _earning(points), 110))) is True
    await emit(nats_url, "shop.order.completed", shop.OrderCompleted(**order))
    assert await wait_until(lambda: _eq(lambda: _total(points), 110))
    explanations = [e.explanation for e in (await points.entries("m")).entries]
    assert "Merchant campaign bonus at shop on o3" in explanations
    assert sum(e.amount for e in (await points.entries("m")).entries) == 110
    # All the money back (and the points used): everything the order earned goes back.
    refund = shop.OrderRefunded(
        order_id="o3",
        member_id="m",
        total=yen(10_000),
        points_used=4_000,
        refunded=yen(6_000),
        points_refunded=4_000,
        merchant_bonus_points=50,
        card_amount=yen(6_000),
    )
    await emit(nats_url, "shop.order.refunded", refund)
    final = await wait_until(lambda: _when(balance, lambda b: b.total == 0))
    assert (final.total, final.debt, final.earning) == (0, 0, 0)


async def test_half_refund_of_a_pending_order_halves_its_earning_including_the_merchant_bonus(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    order = {"order_id": "o4", "member_id": "m", "total": yen(20_000), "card_amount": yen(20_000)}
    await emit(nats_url, "shop.order.paid", shop.OrderPaid(**order, merchant_bonus_points=100))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 300))
    await emit(nats_url, "shop.order.refunded", shop.OrderRefunded(**order, refunded=yen(10_000)))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 150))


async def test_spend_command_captures_without_a_reservation_id(points: Points, nats_url: str) -> None:
    await points.register("m")
    await points.credit("m", 100)
    command = points_events.SpendRequested(
        idempotency_key="s1",
        member_id="m",
        amount=30,
        reason="coupon",
        source_service="shop",
        source_ref="o5",
        member_authorization=points.issuer.member_token("m", scope="points:spend"),
    )
    await emit(nats_url, "points.spend.requested", command, source="kizuna/shop")

    async def captured() -> list[Any]:
        found = [
            points_events.Captured.FromString(m.data) for m in await _ledger_events(nats_url, "points.ledger.captured")
        ]
        return [c for c in found if c.idempotency_key == "s1"]

    [event] = await wait_until(captured)
    assert (event.reservation_id, event.captured, event.balance_after, event.source_ref) == ("", 30, 70, "o5")
    assert event.entry_id
    assert (await points.balance("m")).total == 70


async def _earning(points: Points) -> int:
    return (await points.balance("m")).earning


async def _total(points: Points, member: str = "m") -> int:
    return (await points.balance(member)).total


async def _when(fn: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool]) -> Any:
    value = await fn()
    return value if ok(value) else None


@pytest.mark.parametrize("settings_overrides", [{"earn_cap_per_month": 250}])
async def test_refunding_a_pending_order_in_halves_takes_back_all_it_earned_and_frees_the_monthly_cap(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    order = {"order_id": "o6", "member_id": "m", "total": yen(20_000), "card_amount": yen(20_000)}
    await emit(nats_url, "shop.order.paid", shop.OrderPaid(**order, merchant_bonus_points=100))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 300))  # 200 within the cap + 100 merchant
    await emit(nats_url, "shop.order.refunded", shop.OrderRefunded(**order, refunded=yen(10_000)))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 150))
    await emit(nats_url, "shop.order.refunded", shop.OrderRefunded(**order, refunded=yen(10_000)))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 0))
    # The refunded order no longer counts against the month's cap of 250: the next one earns fully.
    other = {"order_id": "o7", "member_id": "m", "total": yen(20_000), "card_amount": yen(20_000)}
    await emit(nats_url, "shop.order.paid", shop.OrderPaid(**other))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 200))


async def test_refunds_before_and_after_the_grant_take_back_exactly_what_the_order_earned(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    order = {"order_id": "o8", "member_id": "m", "total": yen(20_000), "card_amount": yen(20_000)}
    await emit(nats_url, "shop.order.paid", shop.OrderPaid(**order, merchant_bonus_points=100))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 300))
    await emit(nats_url, "shop.order.refunded", shop.OrderRefunded(**order, refunded=yen(5_000)))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 225))  # a quarter of 300 taken back
    await emit(nats_url, "shop.order.completed", shop.OrderCompleted(**order, merchant_bonus_points=100))
    assert await wait_until(lambda: _eq(lambda: _total(points), 225))
    await emit(nats_url, "shop.order.refunded", shop.OrderRefunded(**order, refunded=yen(15_000)))
    final = await wait_until(lambda: _when(lambda: points.balance("m"), lambda b: b.total == 0))
    assert (final.total, final.debt, final.earning) == (0, 0, 0)

    # Refunds in thirds of a granted 10,000 card purchase: 33 + 33 + 34, none lost to rounding.
    await points.register("n")
    card = {"purchase_id": "p9", "member_id": "n"}
    await emit(nats_url, "fintech.card_purchase.posted", fintech.CardPurchasePosted(**card, amount=yen(10_000)))
    assert await wait_until(lambda: _eq(lambda: _total(points, "n"), 100))
    for refund_id, part in (("r1", 3_333), ("r2", 3_333), ("r3", 3_334)):
        refund = fintech.CardPurchaseRefunded(**card, refund_id=refund_id, amount=yen(part))
        await emit(nats_url, "fintech.card_purchase.refunded", refund)
    final = await wait_until(lambda: _when(lambda: points.balance("n"), lambda b: b.total == 0))
    clawbacks = [e.amount for e in (await points.entries("n")).entries if e.amount < 0]
    assert sorted(clawbacks) == [-34, -33, -33]
    assert final.debt == 0


async def test_cancel_or_refund_of_a_purchase_that_earned_nothing_is_acknowledged_without_effect(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    unknown = {"order_id": "never-paid", "member_id": "m", "total": yen(1_000), "card_amount": yen(1_000)}
    await emit(nats_url, "shop.order.cancelled", shop.OrderCancelled(**unknown))
    await emit(nats_url, "shop.order.refunded", shop.OrderRefunded(**unknown, refunded=yen(500)))
    later = {"order_id": "o10", "member_id": "m", "total": yen(10_000), "card_amount": yen(10_000)}
    await emit(nats_url, "shop.order.paid", shop.OrderPaid(**later))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 100))

    async def consumer_settled() -> Any:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            info = await js.consumer_info("SHOP", "points-shop-earn")
            try:
                dead = (await js.stream_info("DEADLETTER")).state.messages
            except nats.js.errors.NotFoundError:
                dead = 0  # the stream is made on the first dead letter
        finally:
            await nc.close()
        return (info, dead) if info.num_ack_pending == 0 and info.ack_floor.stream_seq == 3 else None

    info, dead_letters = await wait_until(consumer_settled)
    # Three events, three deliveries: each was acknowledged the first time, none dead-lettered.
    assert (info.delivered.consumer_seq, dead_letters) == (3, 0)
    assert await _ledger_events(nats_url, "points.ledger.clawed_back") == []
    balance = await points.balance("m")
    assert (balance.total, balance.debt, balance.earning) == (0, 0, 100)


async def test_a_booking_paid_partly_with_points_earns_on_the_money_paid(points: Points, nats_url: str) -> None:
    await points.register("m")
    booking = {"booking_id": "b1", "member_id": "m", "total": yen(30_000), "points_used": 10_000}
    await emit(nats_url, "travel.booking.confirmed", travel.BookingConfirmed(**booking))
    # 1% of the 20,000 paid by card; the 10,000 paid in points earn nothing.
    assert await wait_until(lambda: _eq(lambda: _earning(points), 200))
    await emit(nats_url, "travel.booking.completed", travel.BookingCompleted(**booking))
    assert await wait_until(lambda: _eq(lambda: _total(points), 200))
    [earned] = (await points.entries("m")).entries
    assert (earned.source_service, earned.source_ref, earned.amount) == ("travel", "b1", 200)
