"""Paying with bank cash and/or points (a card bill, a fund purchase), as a saga:

1. record the payment (idempotent by the member's key; the target is checked and locked);
2. reserve the points part at the points service with the member's token;
3. take the bank part into `suspense:payments` (fails if the balance cannot cover it ->
   the reservation is voided, the payment fails and nothing is charged);
4. capture the points (if that fails, the bank part goes back and the payment fails);
5. apply both parts to the target and publish the outcome, in one transaction.

A payment that stops half-way (a crash, the points service unreachable) is finished or
compensated by the sweeper (`sweeper.py`), which retries capture or void with the same keys.

Every step is keyed by the payment ID, so calling `advance` again after a crash or a retry
finishes the same payment instead of starting another.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kizuna.kit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from kizuna.kit.points import PointsClient
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from fintech import ledger
from fintech.context import Fintech
from fintech.idempotency import run_once
from fintech.models import LedgerAccount, PointsPayment

log = logging.getLogger("fintech.payments")

STARTED, BANK_TAKEN, COMPLETED, FAILED = "started", "bank_taken", "completed", "failed"
# Given up, bank part returned, points hold still to be voided (by the request or the sweeper).
VOIDING = "voiding"
IN_FLIGHT = (STARTED, BANK_TAKEN)

# purpose -> (check the target when the payment is recorded, apply the payment when it completes)
Check = Callable[[AsyncSession, Fintech, str, str, int], Awaitable[None]]
Apply = Callable[[AsyncSession, Fintech, PointsPayment], Awaitable[None]]


@dataclass(frozen=True)
class Recorded:
    payment_id: str


@dataclass(frozen=True)
class PaymentOutcome:
    payment_id: str
    status: str  # completed (or failed / still in progress, see the module's saga)
    purpose: str  # card_bill or fund_buy
    target_id: str  # the statement or the fund
    bank_minor: int
    points: int
    currency: str
    failure: str  # why it failed, else ""


def split_is_valid(bank_minor: int, points: int) -> None:
    if bank_minor < 0 or points < 0:
        raise InvalidArgument("bank_minor and points must not be negative")
    if bank_minor + points <= 0:
        raise InvalidArgument("a payment must be positive: give bank_minor and/or points")


async def in_flight_minor(session: AsyncSession, purpose: str, target_id: str) -> int:
    """What payments still in progress will apply to the target."""
    query = select(func.coalesce(func.sum(PointsPayment.bank_minor + PointsPayment.points), 0)).where(
        PointsPayment.purpose == purpose, PointsPayment.target_id == target_id, col(PointsPayment.status).in_(IN_FLIGHT)
    )
    return int((await session.exec(query)).one())


async def pay(
    ctx: Fintech,
    points_client: PointsClient,
    *,
    member_id: str,
    member_token: str,
    purpose: str,
    target_id: str,
    bank_minor: int,
    points: int,
    key: str,
    check: Check,
    apply: Apply,
    reason: str,
) -> PaymentOutcome:
    split_is_valid(bank_minor, points)

    async def record(session: AsyncSession) -> Recorded:
        await check(session, ctx, member_id, target_id, bank_minor + points)
        if bank_minor:
            await _require_bank(session, member_id)
        payment = PointsPayment(
            payment_id=f"pay_{ULID()}",
            member_id=member_id,
            purpose=purpose,
            target_id=target_id,
            bank_minor=bank_minor,
            points=points,
            currency=ctx.settings.currency,
            status=STARTED,
            created_at=ctx.clock.now(),
        )
        session.add(payment)
        await session.flush()
        return Recorded(payment.payment_id)

    started = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{member_id}:{purpose}",
        key=key,
        request={"target": target_id, "bank_minor": bank_minor, "points": points},
        operation=record,
        result=Recorded,
    )
    return await advance(ctx, points_client, started.payment_id, member_token, apply, reason)


async def _require_bank(session: AsyncSession, member_id: str) -> None:
    if await session.get(LedgerAccount, ledger.bank_account(member_id)) is None:
        raise NotFound(f"member {member_id!r} has no bank account")


async def _load(ctx: Fintech, payment_id: str) -> PointsPayment:
    async with ctx.db.sessions() as session:
        payment = await session.get(PointsPayment, payment_id)
        assert payment is not None
        return payment


async def _set(ctx: Fintech, payment_id: str, **changes: Any) -> None:
    async with ctx.db.transaction() as session:
        payment = await session.get(PointsPayment, payment_id, with_for_update=ctx.postgres, populate_existing=True)
        assert payment is not None
        for name, value in changes.items():
            setattr(payment, name, value)
        session.add(payment)


async def status_of(ctx: Fintech, payment_id: str) -> str:
    return (await _load(ctx, payment_id)).status


async def give_up(ctx: Fintech, points_client: PointsClient, payment_id: str, error: DomainError) -> DomainError:
    """Compensate a payment that will not complete (see `_fail`)."""
    return await _fail(ctx, points_client, payment_id, error)


async def _fail(ctx: Fintech, points_client: PointsClient, payment_id: str, error: DomainError) -> DomainError:
    """Give the payment up; returns the error to raise.

    One transaction returns the bank part (if it was taken) and records the decision: `voiding`
    while a points hold remains, else `failed`. Then the hold is released; if the points service
    cannot be reached now, the payment stays `voiding` and the sweeper retries the void with the
    same idempotency key.
    """
    async with ctx.db.transaction() as session:
        locked = await session.get(PointsPayment, payment_id, with_for_update=ctx.postgres, populate_existing=True)
        assert locked is not None
        if locked.status in IN_FLIGHT:
            if locked.status == BANK_TAKEN and locked.bank_minor:
                await _return_bank_part(session, ctx, locked)
            locked.status = VOIDING if locked.reservation_id else FAILED
            locked.failure = error.message
            session.add(locked)
        status, reservation_id = locked.status, locked.reservation_id
    if status == VOIDING:
        await release_points(ctx, points_client, payment_id, reservation_id)
    return error


async def release_points(ctx: Fintech, points_client: PointsClient, payment_id: str, reservation_id: str) -> bool:
    """Void the points hold of a `voiding` payment (same key on every try), then mark it failed."""
    try:
        await points_client.void(reservation_id, key=f"{payment_id}-void")
    except DomainError as exc:
        log.warning(
            "voiding the points hold failed; the sweeper retries",
            extra={"payment_id": payment_id, "error": exc.message},
        )
        return False
    await _set_if(ctx, payment_id, VOIDING, status=FAILED)
    return True


async def _set_if(ctx: Fintech, payment_id: str, expected: str, **changes: Any) -> None:
    async with ctx.db.transaction() as session:
        payment = await session.get(PointsPayment, payment_id, with_for_update=ctx.postgres, populate_existing=True)
        assert payment is not None
        if payment.status == expected:
            for name, value in changes.items():
                setattr(payment, name, value)
            session.add(payment)


def _result(payment: PointsPayment) -> PaymentOutcome:
    return PaymentOutcome(
        payment_id=payment.payment_id,
        status=payment.status,
        purpose=payment.purpose,
        target_id=payment.target_id,
        bank_minor=payment.bank_minor,
        points=payment.points,
        currency=payment.currency,
        failure=payment.failure,
    )


async def advance(
    ctx: Fintech, points_client: PointsClient, payment_id: str, member_token: str, apply: Apply, reason: str
) -> PaymentOutcome:
    payment = await _load(ctx, payment_id)
    if payment.status in (FAILED, VOIDING):
        raise FailedPrecondition(payment.failure)
    if payment.status == COMPLETED:
        return _result(payment)
    if payment.status == STARTED:
        if payment.points and not payment.reservation_id:
            try:
                reservation = await points_client.reserve(
                    member_id=payment.member_id,
                    member_token=member_token,
                    amount=payment.points,
                    reason=reason,
                    ref=payment.payment_id,
                    key=f"{payment.payment_id}-reserve",
                )
            except DomainError as exc:
                raise await _fail(ctx, points_client, payment_id, exc) from exc
            await _set(ctx, payment_id, reservation_id=reservation)
            payment.reservation_id = reservation
        try:
            async with ctx.db.transaction() as session:
                locked = await session.get(
                    PointsPayment, payment_id, with_for_update=ctx.postgres, populate_existing=True
                )
                assert locked is not None
                if locked.status == STARTED:
                    if locked.bank_minor:
                        await ledger.post(
                            session,
                            kind=f"{locked.purpose}_bank_part",
                            ref=payment_id,
                            memo=reason,
                            currency=locked.currency,
                            postings=ledger.transfer(
                                ledger.bank_account(locked.member_id), ledger.SUSPENSE, locked.bank_minor
                            ),
                            now=ctx.clock.now(),
                            postgres=ctx.postgres,
                        )
                    locked.status = BANK_TAKEN
                    session.add(locked)
        except DomainError as exc:
            raise await _fail(ctx, points_client, payment_id, exc) from exc
    if payment.points:
        try:
            await points_client.capture(payment.reservation_id, key=f"{payment.payment_id}-capture")
        except Unavailable as exc:
            # The capture may have happened: only a clear refusal compensates. The payment stays
            # `bank_taken`; a retry of the same request or the sweeper captures with the same key.
            raise Unavailable("the payment is still in progress; it completes or is reversed shortly") from exc
        except DomainError as exc:
            raise await _fail(ctx, points_client, payment_id, exc) from exc
    async with ctx.db.transaction() as session:
        locked = await session.get(PointsPayment, payment_id, with_for_update=ctx.postgres, populate_existing=True)
        assert locked is not None
        if locked.status == BANK_TAKEN:
            await apply(session, ctx, locked)
            locked.status = COMPLETED
            session.add(locked)
        return _result(locked)


async def _return_bank_part(session: AsyncSession, ctx: Fintech, payment: PointsPayment) -> None:
    await ledger.post(
        session,
        kind=f"{payment.purpose}_bank_part_returned",
        ref=payment.payment_id,
        memo="payment failed",
        currency=payment.currency,
        postings=ledger.transfer(ledger.SUSPENSE, ledger.bank_account(payment.member_id), payment.bank_minor),
        now=ctx.clock.now(),
        postgres=ctx.postgres,
    )


def settlement_postings(payment: PointsPayment, target_account: str) -> list[ledger.Posting]:
    """Move the bank part out of suspense and the points part out of points:receivable into the target.

    `target_account` is credited: it is the card (what the member owes goes down) or a fund.
    """
    postings: list[ledger.Posting] = []
    if payment.bank_minor:
        postings += ledger.transfer(ledger.SUSPENSE, target_account, payment.bank_minor)
    if payment.points:
        postings += ledger.transfer(ledger.POINTS_RECEIVABLE, target_account, payment.points)
    return postings
