"""Earning through the common purchase contract and points commands, through real NATS JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from google.protobuf.message import Message
from kizuna.common.v1 import common_pb2
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.points.v1 import earning_pb2 as contract
from kizuna.points.v1 import events_pb2 as points_events
from kizuna.points.v1 import points_pb2
from nats.js.api import ConsumerConfig

from .pointskit import Points, key


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
        headers = {"Nats-Msg-Id": msg_id or event_id, "ce-id": event_id}
        await js.publish(subject, message.SerializeToString(), headers=headers)
    finally:
        await nc.close()
    return event_id


def yen(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency="JPY")


def purchase(ref: str, member: str = "m", paid: int = 10_000, **fields: Any) -> contract.Purchase:
    return contract.Purchase(reference=ref, member_id=member, paid=yen(paid), **fields)


async def sold(nats_url: str, service: str, stage: str, bought: contract.Purchase, **fields: Any) -> str:
    """Publish `<service>.purchase.<stage>` of the earning contract, as the seller would."""
    message = {
        "paid": contract.PurchasePaid,
        "completed": contract.PurchaseCompleted,
        "cancelled": contract.PurchaseCancelled,
        "refunded": contract.PurchaseRefunded,
    }[stage](purchase=bought, **fields)
    return await emit(nats_url, f"{service}.purchase.{stage}", message)


async def refunded(nats_url: str, service: str, bought: contract.Purchase, ref: str, amount: int) -> str:
    return await sold(nats_url, service, "refunded", bought, refund_reference=ref, refunded=yen(amount))


async def test_purchases_earn_once_pending_then_granted_with_the_multiplier(points: Points, nats_url: str) -> None:
    await emit(nats_url, "identity.member.registered", identity.MemberRegistered(member_id="m"))
    # A card purchase completes at once: completed alone grants it.
    await sold(nats_url, "fintech", "completed", purchase("p1"))

    async def total() -> int:
        return (await points.balance("m")).total

    assert await wait_until(lambda: _eq(total, 100))
    paid = contract.PurchasePaid(purchase=purchase("o1"))
    event_id = await emit(nats_url, "shop.purchase.paid", paid)
    # The same event delivered again (past JetStream's de-duplication) takes effect once.
    await emit(nats_url, "shop.purchase.paid", paid, event_id=event_id, msg_id=f"{event_id}-again")

    async def earning() -> int:
        return (await points.balance("m")).earning

    assert await wait_until(lambda: _eq(earning, 200))  # 1% base + 1% for having used the card
    await sold(nats_url, "shop", "completed", purchase("o1"))
    await sold(nats_url, "shop", "completed", purchase("o1"))  # a second, distinct completion event
    assert await wait_until(lambda: _eq(total, 300))
    await asyncio.sleep(0.5)
    balance = await points.balance("m")
    assert (balance.total, balance.earning) == (300, 0)
    [shop_credit, card_credit] = (await points.entries("m")).entries
    assert shop_credit.explanation == "Earned at shop on o1: 1% base + 1% for using card this month"
    assert card_credit.explanation == "Earned at card on p1: 1% base"

    await refunded(nats_url, "shop", purchase("o1"), "r1", 5_000)
    await refunded(nats_url, "shop", purchase("o1"), "r1", 5_000)  # the same refund again: counts once
    assert await wait_until(lambda: _eq(total, 200))

    credited = await _ledger_events(nats_url, "points.ledger.credited")
    assert sorted(points_events.Credited.FromString(m.data).amount for m in credited) == [100, 200]


async def test_cancelled_before_completion_earns_nothing(points: Points, nats_url: str) -> None:
    await points.register("m")
    await sold(nats_url, "shop", "paid", purchase("o2", paid=50_000))

    async def earning() -> int:
        return (await points.balance("m")).earning

    assert await wait_until(lambda: _eq(earning, 500))
    await sold(nats_url, "shop", "cancelled", purchase("o2", paid=50_000))
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
    await emit(nats_url, "points.credit.requested.shop", command)
    await emit(nats_url, "points.credit.requested.shop", command)  # a retry, new event id
    forged = points_events.CreditRequested(
        idempotency_key="k2", member_id="m", amount=1000, kind=points_pb2.CREDIT_KIND_REGULAR, source_service="shop"
    )
    # Sent by travel (the subject's last token says so) in shop's name.
    await emit(nats_url, "points.credit.requested.travel", forged)
    # No kind: refused as PointsService.Credit refuses it, not taken for regular points.
    kindless = points_events.CreditRequested(idempotency_key="k3", member_id="m", amount=5, source_service="shop")
    await emit(nats_url, "points.credit.requested.shop", kindless)

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
        except (TimeoutError, nats.errors.TimeoutError):
            return []  # nothing there (a loaded machine may raise either)
    finally:
        await nc.close()


async def test_order_paid_partly_with_points_earns_on_card_money_and_a_full_refund_takes_it_all_back(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    order = purchase("o3", paid=6_000, points_used=4_000, merchant_bonus_points=50)
    await sold(nats_url, "shop", "paid", order)

    async def balance() -> Any:
        return await points.balance("m")

    # 1% of the 6,000 paid by card, plus the merchant's 50 (nothing on the 4,000 paid in points).
    assert (await wait_until(lambda: _eq(lambda: _earning(points), 110))) is True
    await sold(nats_url, "shop", "completed", order)
    assert await wait_until(lambda: _eq(lambda: _total(points), 110))
    explanations = [e.explanation for e in (await points.entries("m")).entries]
    assert "Merchant campaign bonus at shop on o3" in explanations
    assert sum(e.amount for e in (await points.entries("m")).entries) == 110
    # All the money back: everything the order earned goes back.
    await refunded(nats_url, "shop", order, "r1", 6_000)
    final = await wait_until(lambda: _when(balance, lambda b: b.total == 0))
    assert (final.total, final.debt, final.earning) == (0, 0, 0)


async def test_half_refund_of_a_pending_order_halves_its_earning_including_the_merchant_bonus(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    order = purchase("o4", paid=20_000, merchant_bonus_points=100)
    await sold(nats_url, "shop", "paid", order)
    assert await wait_until(lambda: _eq(lambda: _earning(points), 300))
    await refunded(nats_url, "shop", order, "r1", 10_000)
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
    await emit(nats_url, "points.spend.requested.shop", command)

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
    order = purchase("o6", paid=20_000, merchant_bonus_points=100)
    await sold(nats_url, "shop", "paid", order)
    assert await wait_until(lambda: _eq(lambda: _earning(points), 300))  # 200 within the cap + 100 merchant
    await refunded(nats_url, "shop", order, "r1", 10_000)
    assert await wait_until(lambda: _eq(lambda: _earning(points), 150))
    await refunded(nats_url, "shop", order, "r2", 10_000)
    assert await wait_until(lambda: _eq(lambda: _earning(points), 0))
    # The refunded order no longer counts against the month's cap of 250: the next one earns fully.
    await sold(nats_url, "shop", "paid", purchase("o7", paid=20_000))
    assert await wait_until(lambda: _eq(lambda: _earning(points), 200))


async def test_refunds_before_and_after_the_grant_take_back_exactly_what_the_order_earned(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    order = purchase("o8", paid=20_000, merchant_bonus_points=100)
    await sold(nats_url, "shop", "paid", order)
    assert await wait_until(lambda: _eq(lambda: _earning(points), 300))
    await refunded(nats_url, "shop", order, "r1", 5_000)
    assert await wait_until(lambda: _eq(lambda: _earning(points), 225))  # a quarter of 300 taken back
    await sold(nats_url, "shop", "completed", order)
    assert await wait_until(lambda: _eq(lambda: _total(points), 225))
    await refunded(nats_url, "shop", order, "r2", 15_000)
    final = await wait_until(lambda: _when(lambda: points.balance("m"), lambda b: b.total == 0))
    assert (final.total, final.debt, final.earning) == (0, 0, 0)

    # Refunds in thirds of a granted 10,000 card purchase: 33 + 33 + 34, none lost to rounding.
    await points.register("n")
    card = purchase("p9", member="n")
    await sold(nats_url, "fintech", "completed", card)
    assert await wait_until(lambda: _eq(lambda: _total(points, "n"), 100))
    for refund_id, part in (("r1", 3_333), ("r2", 3_333), ("r3", 3_334)):
        await refunded(nats_url, "fintech", card, refund_id, part)
    final = await wait_until(lambda: _when(lambda: points.balance("n"), lambda b: b.total == 0))
    clawbacks = [e.amount for e in (await points.entries("n")).entries if e.amount < 0]
    assert sorted(clawbacks) == [-34, -33, -33]
    assert final.debt == 0


# No multiplier: the three streams are consumed concurrently, so which service a purchase sees as
# "used this month" would depend on timing.
@pytest.mark.parametrize("settings_overrides", [{"earn_bonus_bp_per_service": 0}])
async def test_a_cancel_or_refund_that_arrives_before_its_purchase_is_honoured_when_it_arrives(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    # The reproduction: cancelled, then paid, 10,000 JPY -> nothing pending.
    await sold(nats_url, "shop", "cancelled", purchase("o9"))
    await sold(nats_url, "shop", "paid", purchase("o9"))
    # A card purchase refunded in full before it is posted -> nothing granted.
    await refunded(nats_url, "fintech", purchase("p2", paid=20_000), "r1", 20_000)
    await sold(nats_url, "fintech", "completed", purchase("p2", paid=20_000))
    # Half refunded, then paid and completed: half of what it earns.
    await refunded(nats_url, "travel", purchase("b2", paid=20_000), "r1", 10_000)
    await sold(nats_url, "travel", "completed", purchase("b2", paid=20_000))
    await sold(nats_url, "travel", "paid", purchase("b2", paid=20_000))
    # A later purchase: its grant shows every earlier event was handled.
    await sold(nats_url, "shop", "completed", purchase("o10", paid=1_000))

    async def settled() -> Any:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            infos = [await js.consumer_info(s, f"points-{s.lower()}-earn") for s in ("SHOP", "TRAVEL", "FINTECH")]
        finally:
            await nc.close()
        return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos) or None

    await wait_until(settled)
    balance = await points.balance("m")
    # Half of 1% of 20,000 at travel, and 1% of 1,000 at shop; nothing for o9 and p2.
    entries = {(e.source_service, e.source_ref): e.amount for e in (await points.entries("m")).entries}
    assert entries == {("travel", "b2"): 100, ("shop", "o10"): 10}
    assert (balance.total, balance.earning, balance.debt) == (110, 0, 0)
    # Nothing was given only to be taken back.
    assert await _ledger_events(nats_url, "points.ledger.clawed_back") == []


async def test_a_booking_paid_partly_with_points_earns_on_the_money_paid(points: Points, nats_url: str) -> None:
    await points.register("m")
    booking = purchase("b1", paid=20_000, points_used=10_000, category="hotel")
    await sold(nats_url, "travel", "paid", booking)
    # 1% of the 20,000 paid by card; the 10,000 paid in points earn nothing.
    assert await wait_until(lambda: _eq(lambda: _earning(points), 200))
    await sold(nats_url, "travel", "completed", booking)
    assert await wait_until(lambda: _eq(lambda: _total(points), 200))
    [earned] = (await points.entries("m")).entries
    assert (earned.source_service, earned.source_ref, earned.amount) == ("travel", "b1", 200)
