"""Earning through the common contract (kizuna.points.v1 earning.proto), one handler for every
earner.

A seller publishes `<service>.purchase.paid|completed|cancelled|refunded` on its own stream; the
subject's first token is the seller (the broker lets a service publish only under its own name),
so no header or field is trusted for it. Which services earn, under which label and base rate, is
data (settings.kizuna_earners, from the declarations).

Order independence: each event records a FACT on the purchase's row (seen, completed, cancelled,
one refund by its reference), under the member's wallet lock and the purchase row's own lock, and
then brings the ledger to what the facts call for:
- not cancelled, not completed: the quoted earning is pending (GetBalanceResponse.earning);
- completed and not cancelled: it is granted, less the share the refunds so far stand for;
- cancelled: nothing is earned (a granted earning is taken back, a pending one dropped).
A cancel or refund that arrives before the purchase is therefore honoured when it arrives, and a
redelivered event changes nothing (the kit's inbox drops a repeated event id; a refund repeated
under a new event id still counts once, by its refund reference).
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Any

from kizuna.kit.db import OnDriver, attach, flush_pending
from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from kizuna.kit.events import Consumer, Event, durable_name
from kizuna.kit.natsauth import earning_purpose
from kizuna.kit.service import Runtime
from kizuna.points.v1 import earning_pb2 as earning
from sqlalchemy import bindparam, func, insert
from sqlalchemy import select as core_select
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from points import bounds, crediting, ledger, rewards, wallets
from points.grpc_api import ledger_of
from points.models import PendingEarn, PurchaseRefund, Wallet
from points.settings import Earner, Settings

Points = Runtime[Settings]

log = logging.getLogger("points.earning")

STAGES: dict[str, type[Any]] = {
    "paid": earning.PurchasePaid,
    "completed": earning.PurchaseCompleted,
    "cancelled": earning.PurchaseCancelled,
    "refunded": earning.PurchaseRefunded,
}
MAX_REF = 200


def _check(message: Any, stage: str, limits: bounds.Limits) -> None:
    """An event out of range is refused whole (the kit dead-letters it); nothing changes."""
    purchase = message.purchase
    if not message.HasField("purchase"):
        raise InvalidArgument("the event carries no purchase")
    if not 0 < len(purchase.reference) <= MAX_REF:
        raise InvalidArgument(f"purchase.reference must be 1-{MAX_REF} characters")
    if not 0 < len(purchase.member_id) <= 100:
        raise InvalidArgument("purchase.member_id must be 1-100 characters")
    bounds.check_money(purchase.paid.amount_minor, purchase.paid.currency, limits, "purchase.paid", allow_zero=True)
    if not 0 <= purchase.points_used <= limits.max_purchase_minor:
        raise InvalidArgument("purchase.points_used is out of range")
    if purchase.merchant_bonus_points < 0:
        raise InvalidArgument("purchase.merchant_bonus_points must be >= 0")
    if purchase.merchant_bonus_points:
        bounds.check_points(purchase.merchant_bonus_points, limits, "purchase.merchant_bonus_points")
    if len(purchase.label) > 200 or len(purchase.category) > 60:
        raise InvalidArgument("purchase.label (200) or purchase.category (60) is too long")
    if stage == "refunded":
        if not 0 < len(message.refund_reference) <= MAX_REF:
            raise InvalidArgument(f"refund_reference must be 1-{MAX_REF} characters")
        bounds.check_money(message.refunded.amount_minor, message.refunded.currency, limits, "refunded")
        if (message.refunded.currency or "JPY") != (purchase.paid.currency or "JPY"):
            raise InvalidArgument("refunded.currency differs from purchase.paid.currency")


async def on_purchase(runtime: Points, session: AsyncSession, event: Event) -> None:
    service, _, rest = event.subject.partition(".")
    stage = rest.removeprefix("purchase.")
    earner = runtime.settings.earner(service)
    if stage not in STAGES or earner is None:
        raise InvalidArgument(f"{event.subject!r} is not a purchase event of an earner")
    message = event.parse(STAGES[stage])
    limits = bounds.Limits.of(runtime.settings)
    _check(message, stage, limits)
    await apply(runtime.settings, session, ledger_of(runtime).clock.now(), earner, stage, message, event.id)


async def apply(
    settings: Settings, session: AsyncSession, now: datetime, earner: Earner, stage: str, message: Any, key: str
) -> PendingEarn | None:
    """Record the event's fact on its purchase and bring the ledger to what the facts call for
    (None: the member is no longer active, and nothing is recorded)."""
    purchase = message.purchase
    service, ref = earner.service, purchase.reference
    # One statement locks the wallet and tells whether anything fell due (no idempotency record:
    # an event's key is its id, which the kit's inbox already made unique).
    locked = await wallets.lock_for_operation(session, wallets.Member(purchase.member_id), "", "", now)
    wallet = locked.wallet
    if wallet is None:
        # identity's registration has not reached points yet: fail, so the event is retried later.
        raise wallets.UnknownMember(f"unknown member {purchase.member_id!r}")
    if wallet.status != "active":
        # An erased member earns nothing; the event is acknowledged without effect.
        log.info("purchase %s %s of an inactive member acknowledged without effect", service, ref)
        return None
    if locked.due:
        await wallets.settle_due(session, wallet, now)
    row = await _lock_purchase(session, service, ref)
    if row is None:
        # Written once, at the end (below), with what the facts call for: one INSERT, not an
        # INSERT and an UPDATE per flush on the way. Nothing before then reads it, and the wallet
        # lock keeps any other event of the purchase waiting.
        row = PendingEarn(
            source_service=service,
            source_ref=ref,
            member_id=purchase.member_id,
            purchase_minor=purchase.paid.amount_minor,
            currency=purchase.paid.currency or "JPY",
            regular=0,
            bonus=0,
            merchant_bonus=purchase.merchant_bonus_points,
            earned=0,
            refunded_minor=0,
            taken_back=0,
            explanation="",
            status="new",
            created_at=now,
            label=purchase.label,
            category=purchase.category,
        )
    elif row.member_id != purchase.member_id:
        raise InvalidArgument(f"purchase {service} {ref} belongs to another member")
    if stage == "completed":
        row.completed = True
    elif stage == "cancelled":
        row.cancelled = True
    elif stage == "refunded":
        await _record_refund(session, row, message, now)
    await _reconcile(settings, session, wallet, row, now, earner, key)
    if row not in session:
        # Seen for the first time: one INSERT now, not an ORM object for the commit's flush to
        # write (a purchase read and locked above is updated by that flush).
        await _INSERT_PURCHASE.fetch(session, row.model_dump())
    return row


PURCHASES = SQLModel.metadata.tables["points_pending_earn"]
_INSERT_PURCHASE = OnDriver(insert(PURCHASES), "INSERT points_pending_earn")
# Built once: every purchase event locks its row (Core, made the session's entity by `attach`).
_LOCK_PURCHASE = OnDriver(
    core_select(PURCHASES)
    .where(PURCHASES.c.source_service == bindparam("service"), PURCHASES.c.source_ref == bindparam("ref"))
    .with_for_update(),
    "SELECT points_pending_earn FOR UPDATE",
)


async def _lock_purchase(session: AsyncSession, service: str, ref: str) -> PendingEarn | None:
    await flush_pending(session)
    rows = await _LOCK_PURCHASE.fetch(session, {"service": service, "ref": ref})
    return attach(session, PendingEarn, rows[0]) if rows else None


async def _record_refund(session: AsyncSession, row: PendingEarn, message: Any, now: datetime) -> None:
    found = await session.get(PurchaseRefund, (row.source_service, row.source_ref, message.refund_reference))
    if found is None:
        session.add(
            PurchaseRefund(
                source_service=row.source_service,
                source_ref=row.source_ref,
                refund_ref=message.refund_reference,
                amount_minor=message.refunded.amount_minor,
                created_at=now,
            )
        )
        await session.flush()
    total = (
        await session.exec(
            select(func.coalesce(func.sum(PurchaseRefund.amount_minor), 0)).where(
                PurchaseRefund.source_service == row.source_service, PurchaseRefund.source_ref == row.source_ref
            )
        )
    ).one()
    row.refunded_minor = min(int(total), row.purchase_minor)


async def _reconcile(
    settings: Settings, session: AsyncSession, wallet: Wallet, row: PendingEarn, now: datetime, earner: Earner, key: str
) -> None:
    if row.status == "new":
        if row.cancelled:
            # Cancelled before it was seen paid: it earns nothing, but the member did use the
            # service this month, as when the payment had come first.
            await rewards.record_service_use(session, wallet.member_id, row.source_service, now)
            row.status = "cancelled"
            return
        quote = await rewards.quote_and_count(
            session,
            wallet,
            settings.earn_rules(),
            row.source_service,
            ledger.currency_units(row.purchase_minor, row.currency),
            now,
        )
        row.regular, row.bonus = quote.regular, quote.bonus
        row.earned = quote.total + row.merchant_bonus
        row.bonus_expires_at, row.explanation = quote.bonus_expires_at, quote.explanation
        row.status = "pending"
    if row.status == "pending":
        if row.cancelled:
            row.status = "cancelled"
            _give_back_cap_room(wallet, row, row.regular + row.bonus)
            return
        share = _refund_share(row)
        if share > 0:
            row.taken_back += share
            within_caps, left = 0, share
            for part in ("bonus", "merchant_bonus", "regular"):
                cut = min(getattr(row, part), left)
                setattr(row, part, getattr(row, part) - cut)
                left -= cut
                within_caps += cut if part != "merchant_bonus" else 0
            _give_back_cap_room(wallet, row, within_caps)
        if row.completed:
            await _grant(settings, session, wallet, row, now, earner, key)
            row.status = "granted"
    elif row.status == "granted":
        if row.cancelled:
            await _claw_back(session, wallet, now, row, 0, f"{row.source_ref} cancelled", key)
            row.status = "cancelled"
            return
        share = _refund_share(row)
        if share > 0:
            row.taken_back += share
            await _claw_back(session, wallet, now, row, share, f"{row.source_ref} refunded", key)


def _refund_share(row: PendingEarn) -> int:
    return ledger.refund_take_back(row.earned, row.taken_back, row.refunded_minor, row.purchase_minor)


async def _grant(
    settings: Settings, session: AsyncSession, wallet: Wallet, row: PendingEarn, now: datetime, earner: Earner, key: str
) -> None:
    bonus, expires = row.bonus, row.bonus_expires_at
    if expires is not None and expires <= now:
        # The campaign points expired before the purchase completed: never given, never taken back.
        row.earned -= bonus
        row.bonus, bonus, expires = 0, 0, None
    quote = ledger.EarnQuote(row.regular, bonus, expires, 0, (), row.explanation)
    limits = bounds.Limits.of(settings)
    await rewards.grant(
        session,
        wallet,
        now,
        quote=quote,
        service=row.source_service,
        label=earner.label,
        source_ref=row.source_ref,
        key=key,
        regular_expiry_months=settings.regular_expiry_months,
        limits=limits,
        what=row.label,
    )
    if row.merchant_bonus > 0:
        await crediting.credit(
            session,
            wallet,
            now,
            member_id=wallet.member_id,
            amount=row.merchant_bonus,
            kind=ledger.REGULAR,
            reason=f"Merchant campaign bonus at {earner.label} on {row.label or row.source_ref}",
            source_service=row.source_service,
            source_ref=row.source_ref,
            expires_at=None,
            key=key,
            regular_expiry_months=settings.regular_expiry_months,
            limits=limits,
        )


def _give_back_cap_room(wallet: Wallet, row: PendingEarn, points: int) -> None:
    """Points a pending earning no longer gives stop counting against the month's earn cap."""
    if wallet.earn_month == ledger.month_key(row.created_at):
        wallet.earned_this_month = max(wallet.earned_this_month - points, 0)


async def _claw_back(
    session: AsyncSession, wallet: Wallet, now: datetime, row: PendingEarn, amount: int, reason: str, key: str
) -> None:
    request = crediting.ClawbackArgs(
        target="source_ref",
        credit_entry_id="",
        source_ref=row.source_ref,
        source_service=row.source_service,
        amount=amount,
        reason=reason,
        idempotency_key=key,
    )
    try:
        async with session.begin_nested():
            await crediting.clawback(session, wallet, now, caller=row.source_service, request=request, at_most=True)
    except (FailedPrecondition, NotFound):
        pass  # nothing (left) to take back: the purchase earned nothing, or it was taken or expired already


# Purchase events handled at once per earner's stream, each in its own transaction (the kit keeps
# one member's events in order): members' wallets are separate locks, and the shared rows an
# earning writes (the daily budget) are spread over shards by member, so a slow event no longer
# holds up the others queued behind it.
EARN_CONCURRENCY = 8


def consumers(runtime: Points) -> list[Consumer]:
    """One durable consumer per earner's stream, all with the same handler."""
    return [
        Consumer(
            durable_name("points", earning_purpose(e.service)),
            [f"{e.service}.purchase.>"],
            partial(on_purchase, runtime),
            concurrency=EARN_CONCURRENCY,
        )
        for e in runtime.settings.kizuna_earners
    ]
