"""PointsService through real gRPC with real tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta

import grpc
import pytest
from kizuna.common.v1 import common_pb2
from kizuna.points.v1 import points_pb2 as pb
from points.expiry import run_expiry

from .pointskit import Points, key, stamp

DAY = timedelta(days=1)


async def status_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_concurrent_reserves_never_overdraw(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100)
    results = await asyncio.gather(*(status_of(points.reserve("m", 100)) for _ in range(50)))
    assert results.count(grpc.StatusCode.OK) == 1
    assert results.count(grpc.StatusCode.FAILED_PRECONDITION) == 49
    balance = await points.balance("m")
    assert (balance.total, balance.pending) == (0, 100)


async def test_parallel_credits_with_one_key_make_one_entry(points: Points) -> None:
    await points.register("m")
    idem = key()
    responses = await asyncio.gather(*(points.credit("m", 10, idem=idem) for _ in range(100)))
    assert len({r.SerializeToString() for r in responses}) == 1
    assert (await points.balance("m")).total == 10
    assert len((await points.entries("m")).entries) == 1
    assert await status_of(points.credit("m", 11, idem=idem)) == grpc.StatusCode.ALREADY_EXISTS
    # Keys belong to the calling service: travel's key of the same name is its own.
    assert (await points.credit("m", 11, idem=idem, service="travel")).balance_after == 21


async def test_a_rejected_attempt_stays_rejected_on_retry(points: Points) -> None:
    await points.register("m")
    idem = key()
    assert await status_of(points.reserve("m", 50, idem=idem)) == grpc.StatusCode.FAILED_PRECONDITION
    await points.credit("m", 100)
    assert await status_of(points.reserve("m", 50, idem=idem)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await points.balance("m")).pending == 0


async def test_partial_capture_returns_the_rest_and_capture_is_once(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100)
    held = await points.reserve("m", 60)
    assert held.balance_after == 40
    idem = key()
    captured = await points.capture(held.reservation_id, 45, idem=idem)
    assert (captured.captured, captured.returned, captured.balance_after) == (45, 15, 55)
    assert await points.capture(held.reservation_id, 45, idem=idem) == captured  # a retry
    assert await status_of(points.capture(held.reservation_id)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await status_of(points.capture(held.reservation_id, idem=idem)) == grpc.StatusCode.ALREADY_EXISTS
    balance = await points.balance("m")
    assert (balance.total, balance.pending) == (55, 0)
    [spend, _credit] = (await points.entries("m")).entries
    assert (spend.kind, spend.amount) == (pb.ENTRY_KIND_SPEND, -45)


async def test_capture_after_ttl_fails_and_the_hold_returns(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100)
    held = await points.reserve("m", 70, ttl=60)
    assert (await points.balance("m")).pending == 70
    points.clock.advance(timedelta(seconds=61))
    assert await status_of(points.capture(held.reservation_id)) == grpc.StatusCode.FAILED_PRECONDITION
    balance = await points.balance("m")
    assert (balance.total, balance.pending) == (100, 0)


async def test_void_releases_and_only_the_reserving_service_may_touch_it(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100)
    held = await points.reserve("m", 30)
    other = pb.VoidRequest(reservation_id=held.reservation_id, idempotency_key=key())
    assert await status_of(points.stub.Void(other, metadata=points.auth("travel"))) == grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(points.capture(held.reservation_id, service="travel")) == grpc.StatusCode.PERMISSION_DENIED
    void = pb.VoidRequest(reservation_id=held.reservation_id, idempotency_key=key())
    assert (await points.stub.Void(void, metadata=points.auth())).released == 30
    again = pb.VoidRequest(reservation_id=held.reservation_id, idempotency_key=key())
    assert (await points.stub.Void(again, metadata=points.auth())).released == 0
    assert await status_of(points.capture(held.reservation_id)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await points.balance("m")).total == 100


async def test_lots_spend_limited_time_first_then_soonest_and_expire_exactly_the_rest(points: Points) -> None:
    await points.register("m")
    now = points.clock.now()
    await points.credit("m", 100)  # regular: expires in 12 months (rolling)
    await points.credit("m", 30, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + 20 * DAY)
    await points.credit("m", 20, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + 10 * DAY)
    balance = await points.balance("m")
    assert (balance.regular, balance.limited_time, balance.expiring_soon.amount) == (100, 50, 20)
    await points.spend("m", 25)  # 20 from the 10-day lot, 5 from the 20-day lot
    balance = await points.balance("m")
    assert (balance.regular, balance.limited_time, balance.expiring_soon.amount) == (100, 25, 25)
    points.clock.advance(21 * DAY)
    assert await run_expiry(points.runtime.db, points.clock.now()) == 1
    balance = await points.balance("m")
    assert (balance.total, balance.regular, balance.limited_time) == (100, 100, 0)
    [expiry, *_] = (await points.entries("m")).entries
    assert (expiry.kind, expiry.amount, expiry.source_service) == (pb.ENTRY_KIND_EXPIRY, -25, "points")
    assert await run_expiry(points.runtime.db, points.clock.now()) == 0  # nothing twice


async def test_spend_order_holds_beyond_the_first_lots_of_each_kind(points: Points) -> None:
    """More live lots of every kind than Reserve reads at first (the first 16 of each kind, which
    cover these amounts), each kind credited in the reverse of its expiry order: limited-time lots
    go first, soonest first, then regular lots by expiry (rolling ones expire with the wallet, in a
    year here); the expiry runs show which lots were left."""
    await points.register("m")
    now = points.clock.now()
    for i in range(20):
        await points.credit("m", 2, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + (60 - i) * DAY)
        await points.credit("m", 2, expires_at=now + (200 - i) * DAY)  # fixed-date regular
        await points.credit("m", 2)  # rolling
    await points.spend("m", 30)  # the 15 soonest limited-time lots: days 41-55
    points.clock.advance(55 * DAY + DAY // 2)
    assert await run_expiry(points.runtime.db, points.clock.now()) == 0
    assert ((b := await points.balance("m")).limited_time, b.regular) == (10, 80)
    await points.spend("m", 20)  # the other 5 limited-time lots, then fixed-date days 181-185
    assert ((b := await points.balance("m")).limited_time, b.regular) == (0, 70)
    points.clock.advance(131 * DAY)  # day 186.5: the day-186 lot, the soonest left, expires
    assert await run_expiry(points.runtime.db, points.clock.now()) == 1
    assert (await points.balance("m")).total == 68


async def test_regular_points_expire_after_a_year_without_earning(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100)
    points.clock.advance(300 * DAY)
    await points.credit("m", 1)  # earning moves the rolling expiry of all regular points
    points.clock.advance(300 * DAY)
    assert (await points.balance("m")).total == 101
    points.clock.advance(70 * DAY)
    assert (await points.balance("m")).total == 0


async def test_refund_before_and_after_a_lots_expiry(points: Points) -> None:
    await points.register("m")
    now = points.clock.now()
    await points.credit("m", 40, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + 5 * DAY)
    await points.credit("m", 60)
    captured = await points.spend("m", 80)  # 40 limited + 40 regular
    first = await points.stub.Refund(
        pb.RefundRequest(capture_entry_id=captured.entry_id, amount=10, idempotency_key=key()), metadata=points.auth()
    )
    assert (first.refunded, first.expired_not_returned) == (10, 0)
    assert (await points.balance("m")).limited_time == 10
    points.clock.advance(6 * DAY)
    rest = await points.stub.Refund(
        pb.RefundRequest(reservation_id=(await _reservation_of(points, captured)), idempotency_key=key()),
        metadata=points.auth(),
    )
    assert (rest.refunded, rest.expired_not_returned) == (40, 30)
    balance = await points.balance("m")
    assert (balance.total, balance.limited_time) == (60, 0)
    nothing_left = pb.RefundRequest(capture_entry_id=captured.entry_id, idempotency_key=key())
    assert (
        await status_of(points.stub.Refund(nothing_left, metadata=points.auth())) == grpc.StatusCode.FAILED_PRECONDITION
    )


async def _reservation_of(points: Points, captured: pb.CaptureResponse) -> str:
    from points.models import Reservation
    from sqlmodel import select

    async with points.runtime.db.sessions() as session:
        return (
            await session.exec(
                select(Reservation.reservation_id).where(Reservation.capture_entry_id == captured.entry_id)
            )
        ).one()


async def test_clawback_into_debt_is_repaid_by_later_earning_and_never_overdraws(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100, ref="order-1")
    await points.spend("m", 70)
    claw = await points.stub.Clawback(
        pb.ClawbackRequest(source_ref="order-1", reason="order-1 cancelled", idempotency_key=key()),
        metadata=points.auth(),
    )
    assert (claw.clawed_back, claw.debt_created, claw.balance_after) == (100, 70, 0)
    assert (await points.balance("m")).debt == 70
    assert await status_of(points.reserve("m", 1)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await points.credit("m", 50)).balance_after == 0
    assert (await points.credit("m", 50)).balance_after == 30
    balance = await points.balance("m")
    assert (balance.total, balance.debt) == (30, 0)
    again = pb.ClawbackRequest(source_ref="order-1", idempotency_key=key())
    assert await status_of(points.stub.Clawback(again, metadata=points.auth())) == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("settings_overrides", [{"earn_cap_per_month": 250, "earn_cap_per_transaction": 100}])
async def test_earn_caps_hold_under_concurrency(points: Points) -> None:
    await points.register("m")
    purchase = common_pb2.Money(amount_minor=20_000, currency="JPY")  # 200 points uncapped
    calls = [
        points.stub.Earn(
            pb.EarnRequest(member_id="m", purchase=purchase, source_ref=f"o{i}", idempotency_key=key()),
            metadata=points.auth(),
            timeout=30,
        )
        for i in range(8)
    ]
    results = await asyncio.gather(*calls)
    assert sorted(r.earned for r in results) == [0] * 5 + [50, 100, 100]
    assert (await points.balance("m")).total == 250


async def test_bad_input_gets_the_right_status_and_changes_nothing(points: Points) -> None:
    await points.register("m")
    auth = points.auth()
    bad = [
        (
            pb.CreditRequest(member_id="m", amount=0, kind=pb.CREDIT_KIND_REGULAR, idempotency_key=key()),
            grpc.StatusCode.INVALID_ARGUMENT,
            auth,
        ),
        (
            pb.CreditRequest(member_id="m", amount=-5, kind=pb.CREDIT_KIND_REGULAR, idempotency_key=key()),
            grpc.StatusCode.INVALID_ARGUMENT,
            auth,
        ),
        (pb.CreditRequest(member_id="m", amount=5, idempotency_key=key()), grpc.StatusCode.INVALID_ARGUMENT, auth),
        (
            pb.CreditRequest(member_id="m", amount=5, kind=pb.CREDIT_KIND_LIMITED_TIME, idempotency_key=key()),
            grpc.StatusCode.INVALID_ARGUMENT,
            auth,
        ),
        (
            pb.CreditRequest(member_id="m", amount=5, kind=pb.CREDIT_KIND_REGULAR),
            grpc.StatusCode.INVALID_ARGUMENT,
            auth,
        ),
        (
            pb.CreditRequest(member_id="ghost", amount=5, kind=pb.CREDIT_KIND_REGULAR, idempotency_key=key()),
            grpc.StatusCode.NOT_FOUND,
            auth,
        ),
        (
            pb.CreditRequest(member_id="m", amount=5, kind=pb.CREDIT_KIND_REGULAR, idempotency_key=key()),
            grpc.StatusCode.PERMISSION_DENIED,
            points.auth(scope="points:read"),
        ),
        (
            pb.CreditRequest(
                member_id="m", amount=5, kind=pb.CREDIT_KIND_REGULAR, source_service="travel", idempotency_key=key()
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            auth,
        ),
        (
            pb.CreditRequest(member_id="m", amount=5, kind=pb.CREDIT_KIND_REGULAR, idempotency_key=key()),
            grpc.StatusCode.UNAUTHENTICATED,
            [("authorization", "Bearer not-a-token")],
        ),
        (
            pb.CreditRequest(member_id="m", amount=5, kind=pb.CREDIT_KIND_REGULAR, idempotency_key=key()),
            grpc.StatusCode.UNAUTHENTICATED,
            [],
        ),
    ]
    for request, expected, metadata in bad:
        assert await status_of(points.stub.Credit(request, metadata=metadata)) == expected, request
    reserve = pb.ReserveRequest(member_id="m", amount=1, idempotency_key=key())
    assert await status_of(points.stub.Reserve(reserve, metadata=auth)) == grpc.StatusCode.PERMISSION_DENIED
    assert (
        await status_of(points.stub.Reserve(reserve, metadata=points.auth(member="other")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await status_of(points.stub.Reserve(reserve, metadata=points.auth(member="m", member_scope="points:read")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    for amount in (0, -1):
        assert await status_of(points.reserve("m", amount)) == grpc.StatusCode.INVALID_ARGUMENT
    capture = pb.CaptureRequest(reservation_id="rsv_unknown", idempotency_key=key())
    assert await status_of(points.stub.Capture(capture, metadata=auth)) == grpc.StatusCode.NOT_FOUND
    # A member reads only their own balance; a service needs points:read.
    own = points.issuer.member_token("m", scope="points:read")
    read = pb.GetBalanceRequest(member_id="m")
    assert (await points.stub.GetBalance(read, metadata=[("authorization", f"Bearer {own}")])).total == 0
    other = pb.GetBalanceRequest(member_id="someone-else")
    assert (
        await status_of(points.stub.GetBalance(other, metadata=[("authorization", f"Bearer {own}")]))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await status_of(points.stub.GetBalance(read, metadata=points.auth(scope="points:credit")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    balance = await points.balance("m")
    assert (balance.total, balance.pending, balance.debt) == (0, 0, 0)
    assert not (await points.entries("m")).entries


async def test_entries_are_paged_newest_first_with_explanations(points: Points) -> None:
    await points.register("m")
    for i in range(5):
        await points.credit("m", i + 1, reason=f"credit {i}")
    first = await points.entries("m", page_size=3)
    assert [e.explanation for e in first.entries] == ["credit 4", "credit 3", "credit 2"]
    second = await points.entries("m", page_size=3, token=first.page_info.next_page_token)
    assert [e.amount for e in second.entries] == [2, 1]
    assert second.page_info.next_page_token == ""


async def test_a_fixed_expiry_date_must_be_in_the_future_and_the_expiry_pass_keeps_it(points: Points) -> None:
    # A credit's expires_at in the past is refused; a regular credit may carry a fixed date.
    await points.register("m")
    past = stamp(points.clock.now() - DAY)
    request = pb.CreditRequest(
        member_id="m", amount=5, kind=pb.CREDIT_KIND_REGULAR, expires_at=past, idempotency_key=key()
    )
    assert await status_of(points.stub.Credit(request, metadata=points.auth())) == grpc.StatusCode.INVALID_ARGUMENT
    await points.credit("m", 5, expires_at=points.clock.now() + DAY)
    await points.credit("m", 7)  # rolling regular points: a later earn does not move the fixed date
    assert (await points.balance("m")).expiring_soon.amount == 5
    assert await run_expiry(points.runtime.db, points.clock.now()) == 0  # nothing due yet
    points.clock.advance(2 * DAY)
    assert await run_expiry(points.runtime.db, points.clock.now()) == 1
    [expiry, *_] = (await points.entries("m")).entries
    assert (expiry.kind, expiry.amount, expiry.explanation) == (pb.ENTRY_KIND_EXPIRY, -5, "5 regular points expired")
    balance = await points.balance("m")
    assert (balance.total, balance.expiring_soon.amount) == (7, 7)


async def _claw_back(points: Points, ref: str) -> pb.ClawbackResponse:
    request = pb.ClawbackRequest(source_ref=ref, reason=f"{ref} cancelled", idempotency_key=key())
    response: pb.ClawbackResponse = await points.stub.Clawback(request, metadata=points.auth(), timeout=30)
    return response


async def test_clawback_takes_back_only_what_did_not_expire(points: Points) -> None:
    await points.register("m")
    now = points.clock.now()
    await points.credit("m", 100, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=now + 5 * DAY, ref="campaign-1")
    await points.credit("m", 50, ref="order-1")
    await points.spend("m", 30)  # limited-time points go first: 30 of campaign-1's are spent
    points.clock.advance(6 * DAY)  # the other 70 expire
    assert (await points.balance("m")).total == 50
    claw = await _claw_back(points, "campaign-1")
    # The member kept the benefit of the 30 spent; the 70 that expired are not taken a second time.
    assert (claw.clawed_back, claw.debt_created, claw.balance_after) == (30, 0, 20)
    balance = await points.balance("m")
    assert (balance.total, balance.debt) == (20, 0)
    assert await status_of(_claw_back(points, "campaign-1")) == grpc.StatusCode.FAILED_PRECONDITION


async def test_held_points_coming_back_repay_debt_before_they_can_be_spent(points: Points) -> None:
    await points.register("voided", "timed-out", "captured")
    held = {}
    for member in ("voided", "timed-out", "captured"):
        await points.credit(member, 100, ref=f"order-{member}")
        held[member] = await points.reserve(member, 100, ttl=60)
        claw = await _claw_back(points, f"order-{member}")
        assert (claw.debt_created, (await points.balance(member)).pending) == (100, 100)
    void = pb.VoidRequest(reservation_id=held["voided"].reservation_id, idempotency_key=key())
    assert (await points.stub.Void(void, metadata=points.auth())).released == 100
    captured = await points.capture(held["captured"].reservation_id, 40)
    assert (captured.captured, captured.returned) == (40, 60)
    points.clock.advance(timedelta(seconds=61))
    states = {}
    for member in held:
        balance = await points.balance(member)
        states[member] = (balance.total, balance.pending, balance.debt)
    assert states == {"voided": (0, 0, 0), "timed-out": (0, 0, 0), "captured": (0, 0, 40)}
    assert await status_of(points.reserve("voided", 1)) == grpc.StatusCode.FAILED_PRECONDITION


async def test_refunded_points_repay_debt_first(points: Points) -> None:
    await points.register("m")
    await points.credit("m", 100, ref="order-1")
    captured = await points.spend("m", 100)
    assert (await _claw_back(points, "order-1")).debt_created == 100
    refund = pb.RefundRequest(capture_entry_id=captured.entry_id, amount=60, idempotency_key=key())
    assert (await points.stub.Refund(refund, metadata=points.auth())).refunded == 60
    balance = await points.balance("m")
    assert (balance.total, balance.debt) == (0, 40)
