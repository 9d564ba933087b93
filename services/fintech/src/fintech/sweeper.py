"""Background repairs: bill and fund payments stuck half-way are finished or compensated, and
card holds that lapsed are marked expired.

A payment is stuck when it is still in progress `payment_stuck_seconds` after it began (the
request that drove it crashed, or the points service did not answer):
- `started` (the bank part not taken): given up — the points hold, if any, is voided;
- `bank_taken`: finished — the points are captured with the payment's capture key (a capture that
  already happened answers the same), then applied; a clear refusal compensates instead;
- `voiding` (given up, hold not yet released): the void is retried with the same key.
A reservation fintech never learned about (a crash right after Reserve) times out at points.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from kizuna.kit.errors import DomainError, FailedPrecondition
from kizuna.kit.points import PointsClient
from kizuna.kit.service import Runtime
from sqlmodel import col, select

from fintech import cards, payments, securities, statements
from fintech.context import Fintech, fintech_of
from fintech.models import PointsPayment

log = logging.getLogger("fintech.sweeper")

# purpose -> (apply the payment to its target, the reason shown at points)
FINISHERS: dict[str, tuple[payments.Apply, str]] = {
    "card_bill": (statements.apply_bill, "Kizuna Card bill"),
    "fund_buy": (securities.apply_buy, "Kizuna fund purchase"),
}


async def sweep_payments(ctx: Fintech, points: PointsClient) -> dict[str, int]:
    """One pass over stuck payments; returns how many ended completed, failed, or still pending."""
    cutoff = ctx.clock.now() - timedelta(seconds=ctx.settings.payment_stuck_seconds)
    async with ctx.db.sessions() as session:
        stuck = (
            await session.exec(
                select(PointsPayment).where(
                    col(PointsPayment.status).in_([*payments.IN_FLIGHT, payments.VOIDING]),
                    col(PointsPayment.created_at) <= cutoff,
                )
            )
        ).all()
    outcome = {"completed": 0, "failed": 0, "pending": 0}
    for payment in stuck:
        try:
            result = await _sweep_one(ctx, points, payment)
        except DomainError as exc:
            log.warning(
                "a stuck payment is still pending", extra={"payment_id": payment.payment_id, "error": exc.message}
            )
            result = "pending"
        outcome[result] += 1
    return outcome


async def _sweep_one(ctx: Fintech, points: PointsClient, payment: PointsPayment) -> str:
    if payment.status == payments.VOIDING:
        released = await payments.release_points(ctx, points, payment.payment_id, payment.reservation_id)
        return "failed" if released else "pending"
    if payment.status == payments.STARTED:
        await payments.give_up(
            ctx,
            points,
            payment.payment_id,
            FailedPrecondition("the payment did not complete in time; nothing was charged"),
        )
        return "failed" if (await payments.status_of(ctx, payment.payment_id)) == payments.FAILED else "pending"
    apply, reason = FINISHERS[payment.purpose]
    try:
        await payments.advance(ctx, points, payment.payment_id, "", apply, reason)
    except FailedPrecondition:
        status = await payments.status_of(ctx, payment.payment_id)
        return "failed" if status == payments.FAILED else "pending"
    return "completed"


async def expire_holds(ctx: Fintech) -> int:
    async with ctx.db.transaction() as session:
        return await cards.expire_holds(session, ctx.clock.now())


async def sweep(runtime: Runtime[Any]) -> dict[str, int]:
    """One full pass (the job's body; tests call it directly)."""
    ctx = fintech_of(runtime)
    outcome = await sweep_payments(ctx, ctx.points)
    outcome["holds_expired"] = await expire_holds(ctx)
    return outcome


async def sweeper_job(runtime: Runtime[Any]) -> None:
    ctx = fintech_of(runtime)
    while True:
        try:
            await sweep(runtime)
        except Exception:
            log.exception("sweeping failed; will retry")
        await asyncio.sleep(ctx.settings.sweep_interval_seconds)
