"""Bounds: out-of-range amounts on every mutating RPC and on purchase events are refused
(INVALID_ARGUMENT, or a dead letter for an event) and change nothing; a service's daily credit
budget is refused past its limit and counted; a credit for a member points has not seen yet is
refused without being remembered, so the producer's retry succeeds; PreviewEarn."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import grpc
import nats
import pytest
from kizuna.common.v1 import common_pb2
from kizuna.kit.testing import counter_values, wait_until
from kizuna.points.v1 import earning_pb2 as contract
from kizuna.points.v1 import events_pb2 as points_events
from kizuna.points.v1 import points_pb2 as pb
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from points import bounds, crediting, wallets
from points.ledger import REGULAR
from sqlalchemy import text

from .pointskit import Points, key

INT64_MAX = 2**63 - 1
OUT_OF_RANGE = [INT64_MAX, 10**15, 1_000_001]


def yen(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency="JPY")


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code()


async def snapshot(points: Points, member: str) -> tuple[Any, ...]:
    balance = await points.balance(member)
    entries = (await points.entries(member)).entries
    return (balance.total, balance.pending, balance.debt, balance.earning, len(entries))


@pytest.mark.parametrize("amount", OUT_OF_RANGE)
async def test_out_of_range_amounts_on_every_mutating_rpc_are_invalid_and_change_nothing(
    points: Points, amount: int
) -> None:
    await points.register("m")
    await points.credit("m", 500, ref="c1")
    held = await points.reserve("m", 100)
    spent = await points.capture((await points.reserve("m", 50)).reservation_id)
    before = await snapshot(points, "m")
    auth, member_auth = points.auth(), points.auth(member="m")
    money = min(amount * 10_000, INT64_MAX)  # a purchase that would earn `amount` points
    calls = {
        "Credit": points.stub.Credit(
            pb.CreditRequest(member_id="m", amount=amount, kind=pb.CREDIT_KIND_REGULAR, idempotency_key=key()),
            metadata=auth,
        ),
        "Earn": points.stub.Earn(
            pb.EarnRequest(member_id="m", purchase=yen(money), idempotency_key=key()), metadata=auth
        ),
        "Reserve": points.stub.Reserve(
            pb.ReserveRequest(member_id="m", amount=amount, idempotency_key=key()), metadata=member_auth
        ),
        "Capture": points.stub.Capture(
            pb.CaptureRequest(reservation_id=held.reservation_id, amount=amount, idempotency_key=key()), metadata=auth
        ),
        "Refund": points.stub.Refund(
            pb.RefundRequest(capture_entry_id=spent.entry_id, amount=amount, idempotency_key=key()), metadata=auth
        ),
        "Clawback": points.stub.Clawback(
            pb.ClawbackRequest(source_ref="c1", amount=amount, idempotency_key=key()), metadata=auth
        ),
        "PreviewEarn": points.stub.PreviewEarn(
            pb.PreviewEarnRequest(member_id="m", service="shop", purchase=yen(money)), metadata=auth
        ),
    }
    codes = {name: await code_of(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, grpc.StatusCode.INVALID_ARGUMENT)
    assert await snapshot(points, "m") == before
    # Negative amounts too.
    negative = pb.EarnRequest(member_id="m", purchase=yen(-1), idempotency_key=key())
    assert await code_of(points.stub.Earn(negative, metadata=auth)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_credit_at_the_bound_is_accepted_and_the_ledger_stays_int64_safe(points: Points) -> None:
    await points.register("m")
    for _ in range(3):
        await points.credit("m", 1_000_000)
    assert (await points.balance("m")).total == 3_000_000


@pytest.mark.parametrize(
    "bad",
    [
        {"paid": INT64_MAX},
        {"paid": -5},
        {"merchant_bonus_points": 10**15},
        {"merchant_bonus_points": -1},
        {"paid": 1_000, "currency": "yen"},
        {"paid": 1_000, "reference": ""},
    ],
)
async def test_an_out_of_range_purchase_event_is_dead_lettered_and_changes_nothing(
    points: Points, nats_url: str, bad: dict[str, Any]
) -> None:
    await points.register("m")
    money = common_pb2.Money(amount_minor=bad.get("paid", 1_000), currency=bad.get("currency", "JPY"))
    purchase = contract.Purchase(
        reference=bad.get("reference", "o-bad"),
        member_id="m",
        paid=money,
        merchant_bonus_points=bad.get("merchant_bonus_points", 0),
    )
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.publish("shop.purchase.completed", contract.PurchaseCompleted(purchase=purchase).SerializeToString())
        good = contract.Purchase(reference="o-good", member_id="m", paid=yen(10_000))
        await js.publish("shop.purchase.completed", contract.PurchaseCompleted(purchase=good).SerializeToString())

        async def dead_letters() -> int:
            try:
                return int((await js.stream_info("DEADLETTER")).state.messages)
            except nats.js.errors.NotFoundError:
                return 0

        assert await wait_until(dead_letters, timeout=30) == 1
    finally:
        await nc.close()

    # The good purchase behind it was not blocked; the bad one left nothing.
    async def entries() -> Any:
        found = [(e.source_ref, e.amount) for e in (await points.entries("m")).entries]
        return found or None

    assert await wait_until(entries, timeout=30) == [("o-good", 100)]


async def test_a_credit_for_a_member_not_seen_yet_is_refused_without_being_remembered(points: Points) -> None:
    request = pb.CreditRequest(member_id="late", amount=40, kind=pb.CREDIT_KIND_REGULAR, idempotency_key="welcome-late")
    assert await code_of(points.stub.Credit(request, metadata=points.auth())) == grpc.StatusCode.NOT_FOUND
    earn = pb.EarnRequest(member_id="late", purchase=yen(10_000), idempotency_key="earn-late")
    assert await code_of(points.stub.Earn(earn, metadata=points.auth())) == grpc.StatusCode.NOT_FOUND
    await points.register("late")  # identity's member.registered arrives
    # The producer's retry with the same keys now succeeds.
    assert (await points.stub.Credit(request, metadata=points.auth())).balance_after == 40
    assert (await points.stub.Earn(earn, metadata=points.auth())).earned == 100
    assert (await points.balance("late")).total == 140


def refusals(reader: InMemoryMetricReader) -> dict[str, int]:
    return counter_values(reader, "kizuna.points.budget_refused", "service")


@pytest.mark.parametrize(
    "settings_overrides", [{"credit_budget_per_day": 1_000, "credit_budget_per_day_by_service": {"travel": 50}}]
)
async def test_a_service_past_its_daily_credit_budget_is_refused_and_counted(
    points: Points, metric_reader: InMemoryMetricReader
) -> None:
    await points.register("m", "n")
    await points.credit("m", 600, service="shop")
    await points.credit("n", 400, service="shop")  # exactly the budget, over two members' shards
    over = pb.CreditRequest(member_id="m", amount=1, kind=pb.CREDIT_KIND_REGULAR, idempotency_key="over")
    assert await code_of(points.stub.Credit(over, metadata=points.auth("shop"))) == grpc.StatusCode.FAILED_PRECONDITION
    # travel has its own, smaller budget; fintech the default.
    await points.credit("m", 50, service="travel")
    travel_over = pb.CreditRequest(member_id="n", amount=1, kind=pb.CREDIT_KIND_REGULAR, idempotency_key="t-over")
    assert (
        await code_of(points.stub.Credit(travel_over, metadata=points.auth("travel")))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    await points.credit("n", 1_000, service="fintech")
    assert refusals(metric_reader) == {"shop": 1, "travel": 1}
    assert ((await points.balance("m")).total, (await points.balance("n")).total) == (650, 1_400)
    # Not remembered: the next day (or a raised budget) the same key succeeds.
    points.clock.advance(timedelta(days=1))
    assert (await points.stub.Credit(over, metadata=points.auth("shop"))).balance_after == 651


async def test_preview_earn_explains_what_a_purchase_would_earn_and_changes_nothing(points: Points) -> None:
    await points.register("m")
    await points.stub.Earn(
        pb.EarnRequest(member_id="m", purchase=yen(5_000), idempotency_key=key()), metadata=points.auth("fintech")
    )
    before = await snapshot(points, "m")
    preview = await points.stub.PreviewEarn(
        pb.PreviewEarnRequest(member_id="m", service="shop", purchase=yen(10_000)), metadata=points.auth()
    )
    assert (preview.regular, preview.bonus, preview.total, preview.rate_bp) == (200, 0, 200, 200)
    assert preview.explanation == "1% base + 1% for using card this month"
    assert await snapshot(points, "m") == before
    # A member not seen yet is quoted as a new member; a service that does not earn is refused.
    fresh = await points.stub.PreviewEarn(
        pb.PreviewEarnRequest(member_id="nobody", service="travel", purchase=yen(10_000)), metadata=points.auth()
    )
    assert (fresh.total, fresh.explanation) == (100, "1% base")
    unknown = pb.PreviewEarnRequest(member_id="m", service="casino", purchase=yen(10_000))
    assert await code_of(points.stub.PreviewEarn(unknown, metadata=points.auth())) == grpc.StatusCode.INVALID_ARGUMENT
    # A member reads their own preview, never another member's.
    own = pb.PreviewEarnRequest(member_id="m", service="shop", purchase=yen(10_000))
    assert (await points.stub.PreviewEarn(own, metadata=points.auth(scope="", member="m"))).total == 200


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "kizuna_earners": [
                {"service": "shop", "label": "Shop", "rate_percent": 1.0},
                {"service": "dojo", "label": "Dojo", "rate_percent": 3.0},
            ]
        }
    ],
)
async def test_a_new_earner_from_data_earns_through_the_contract_with_no_change_to_points(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="DOJO", subjects=["dojo.>"])
        purchase = contract.Purchase(reference="lesson-1", member_id="m", paid=yen(10_000), label="Kendo lesson")
        await js.publish("dojo.purchase.completed", contract.PurchaseCompleted(purchase=purchase).SerializeToString())
    finally:
        await nc.close()

    async def earned() -> Any:
        return [e for e in (await points.entries("m")).entries if e.source_service == "dojo"]

    [entry] = await wait_until(earned, timeout=20)
    assert (entry.amount, entry.explanation) == (300, "Earned at Dojo on Kendo lesson: 3% base")


@pytest.mark.parametrize("settings_overrides", [{"credit_budget_per_day": 100}])
async def test_a_credit_command_past_the_budget_is_rejected_as_such_and_may_be_sent_again(
    points: Points, nats_url: str
) -> None:
    await points.register("m")
    await points.credit("m", 80, service="shop")  # 80 of the shop's 100 today
    command = points_events.CreditRequested(
        idempotency_key="big", member_id="m", amount=50, kind=pb.CREDIT_KIND_REGULAR, source_service="shop"
    )
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.publish("points.credit.requested.shop", command.SerializeToString(), headers={"ce-id": "c-1"})
        rejections = await js.pull_subscribe("points.command.rejected", durable=None, stream="POINTS")
        [rejected] = await rejections.fetch(1, timeout=20)
        answer = points_events.CommandRejected.FromString(rejected.data)
        assert (answer.idempotency_key, answer.reason) == ("big", points_events.REJECTION_REASON_BUDGET_EXCEEDED)
        # Refused whole: the rejection's transaction commits, and the member's balance, lots and
        # entries are as they were (no credit half-applied to the wallet).
        balance = await points.balance("m")
        assert (balance.total, balance.regular) == (80, 80)
        assert [e.amount for e in (await points.entries("m")).entries] == [80]
        # Not remembered: the same command, sent again once the budget allows it, is applied.
        points.clock.advance(timedelta(days=1))
        await js.publish("points.credit.requested.shop", command.SerializeToString(), headers={"ce-id": "c-2"})

        async def total() -> int:
            return (await points.balance("m")).total

        assert await wait_until(lambda: _is(total, 130), timeout=20)
        # The ledger event follows the balance through the outbox: read until both credits are there.
        applied = await js.pull_subscribe("points.ledger.credited", durable=None, stream="POINTS")
        found: list[Any] = []

        async def both() -> bool:
            with contextlib.suppress(nats.errors.TimeoutError):
                found.extend(points_events.Credited.FromString(m.data) for m in await applied.fetch(2, timeout=1))
            return len(found) >= 2

        assert await wait_until(both, timeout=20)
        assert [c.idempotency_key for c in found if c.amount == 50] == ["big"]
    finally:
        await nc.close()


@pytest.mark.parametrize("settings_overrides", [{"credit_budget_per_day": 100}])
async def test_a_single_credit_past_the_budget_writes_nothing_before_its_rollback(points: Points) -> None:
    """The single path's credit (earnings, commands, the welcome bonus) charges the budget in its
    entry's statement on PostgreSQL: refused, that statement writes no entry, lot, wallet change or
    charge, even inside the transaction before it rolls back."""
    await points.register("m")
    await points.credit("m", 80, service="shop")  # 80 of the shop's 100 today
    db = points.runtime.db
    counts = text("""SELECT (SELECT count(*) FROM points_entry WHERE member_id = 'm'),
        (SELECT count(*) FROM points_lot WHERE member_id = 'm'),
        (SELECT available FROM points_wallet WHERE member_id = 'm'),
        (SELECT coalesce(sum(points), 0) FROM points_daily_credit WHERE service = 'shop')""")
    async with db.sessions() as session:
        before = tuple((await session.exec(counts)).one())  # type: ignore[call-overload]  # Raw SQL in the ORM session.
        wallet = await wallets.lock_wallet(session, "m")
        with pytest.raises(wallets.OverBudget, match="shop has credited 80 of its 100 points today"):
            await crediting.credit(
                session,
                wallet,
                points.clock.now(),
                member_id="m",
                amount=50,
                kind=REGULAR,
                reason="refused",
                source_service="shop",
                source_ref="r-1",
                expires_at=None,
                key="k-1",
                regular_expiry_months=points.runtime.settings.regular_expiry_months,
                limits=bounds.Limits.of(points.runtime.settings),
            )
        assert tuple((await session.exec(counts)).one()) == before == (1, 1, 80, 80)  # type: ignore[call-overload]  # Raw SQL.
        await session.rollback()


async def _is(fn: Any, expected: Any) -> bool:
    return bool(await fn() == expected)
