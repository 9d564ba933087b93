"""Crediting and taking back: Credit adds a lot (repaying debt first); Clawback takes back what a
service credited, only what the member still benefits from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from kizuna.kit.events import publish
from kizuna.points.v1 import events_pb2 as ev
from sqlalchemy import bindparam, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from points import ledger
from points.bounds import Limits, charge_budget, charge_of, check_points, refuse_charge
from points.journal import (
    LEDGER_COLUMNS,
    LOT_KIND,
    LOTS,
    Charge,
    NewLot,
    NotCharged,
    flush_before_sql,
    post_entry,
    ts,
)
from points.ledger import LIMITED_TIME
from points.ledger_metrics import count_on_commit, points_credited
from points.models import Entry, Wallet, account_available, account_debt, account_issued
from points.wallets import count_lot_points, lot_state, member_lots, require_active


@dataclass(frozen=True)
class Credited:
    entry_id: str
    balance_after: int


@dataclass(frozen=True)
class ClawbackArgs:
    # Which of credit_entry_id / source_ref names the credits; None: neither.
    target: str | None
    credit_entry_id: str
    source_ref: str
    source_service: str
    # 0 takes back everything not yet taken back.
    amount: int
    reason: str
    idempotency_key: str


@dataclass(frozen=True)
class ClawedBack:
    clawed_back: int
    debt_created: int
    entry_id: str
    balance_after: int


# The member's rolling expiry lapsed before this credit: their rolling lots keep that date as a
# fixed one (their points expired with it) before the rolling expiry moves on. Rare: at most once
# per lapse, so a credit's cost does not depend on the member's history.
_FREEZE_LAPSED_ROLLING = (
    update(LOTS)
    .where(LOTS.c.member_id == bindparam("member"), LOTS.c.rolling.is_(True))
    .values(rolling=False, expires_at=bindparam("lapsed", type_=LOTS.c.expires_at.type))
    .returning(LOTS.c.remaining)
)


def check_credit(amount: int, kind: str, expires_at: datetime | None, now: datetime, limits: Limits) -> None:
    """What a credit's request must be, whoever's wallet it goes to."""
    check_points(amount, limits)
    if kind == LIMITED_TIME and (expires_at is None or expires_at <= now):
        raise InvalidArgument("limited-time points need an expires_at in the future")
    if expires_at is not None and expires_at <= now:
        raise InvalidArgument("expires_at must be in the future")


class CreditPlan(NamedTuple):
    postings: dict[str, int]
    explanation: str
    lot: NewLot


def plan_credit(
    wallet: Wallet,
    now: datetime,
    *,
    amount: int,
    kind: str,
    reason: str,
    source_service: str,
    expires_at: datetime | None,
    regular_expiry_months: int,
) -> CreditPlan:
    """Move the wallet's rolling expiry and count the new lot's points (in memory); the entry to
    post. The wallet's rolling expiry must not have lapsed (see `credit`)."""
    rolling_until = ledger.add_months(now, regular_expiry_months)
    wallet.rolling_expires_at = rolling_until
    wallet.last_earned_at = now
    repaid, to_lot = ledger.plan_credit(amount, wallet.debt)
    lot_expires = expires_at or rolling_until
    count_lot_points(wallet, kind, expires_at is None, to_lot)
    member_id = wallet.member_id
    return CreditPlan(
        postings={
            account_issued(source_service): -amount,
            account_available(member_id): to_lot,
            account_debt(member_id): repaid,
        },
        explanation=reason + (f" ({repaid} repaid debt)" if repaid else ""),
        lot=NewLot(kind=kind, rolling=expires_at is None, amount=amount, remaining=to_lot, expires_at=lot_expires),
    )


def credited_event(
    entry_id: str,
    wallet: Wallet,
    now: datetime,
    plan: CreditPlan,
    *,
    reason: str,
    source_service: str,
    source_ref: str,
    key: str,
) -> ev.Credited:
    return ev.Credited(
        entry_id=entry_id,
        member_id=wallet.member_id,
        amount=plan.lot.amount,
        kind=LOT_KIND[plan.lot.kind],
        reason=reason,
        source_service=source_service,
        source_ref=source_ref,
        expires_at=ts(plan.lot.expires_at),
        balance_after=wallet.available,
        idempotency_key=key,
        credited_at=ts(now),
    )


def lapsed(wallet: Wallet, now: datetime) -> bool:
    """The member's rolling expiry passed before this moment (see `credit`)."""
    return wallet.rolling_expires_at is not None and wallet.rolling_expires_at <= now


async def credit(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    member_id: str,
    amount: int,
    kind: str,
    reason: str,
    source_service: str,
    source_ref: str,
    expires_at: datetime | None,
    key: str,
    regular_expiry_months: int,
    limits: Limits,
) -> Credited:
    check_credit(amount, kind, expires_at, now, limits)
    wallet = require_active(wallet, member_id)
    await flush_before_sql(session, wallet)  # what settling changed through the ORM
    conn = await session.connection()
    charge: Charge | None = None
    before: dict[str, Any] = {}
    if conn.dialect.name == "postgresql" and not lapsed(wallet, now):
        # Charged in the entry's statement (one round trip less): refused, it writes nothing, and
        # the wallet in memory is put back as it was (below).
        charge = charge_of(source_service, member_id, amount, now, limits)
        before = {column: getattr(wallet, column) for column in LEDGER_COLUMNS}
    else:
        # Charged first: before the lapse's freeze, which a refusal must not leave behind.
        await charge_budget(session, source_service, member_id, amount, now, limits)
    # Earning moves the rolling expiry of the member's regular lots: once, on the wallet.
    if lapsed(wallet, now):
        params = {"member": member_id, "lapsed": wallet.rolling_expires_at}
        frozen = (await conn.execute(_FREEZE_LAPSED_ROLLING, params)).scalars()
        wallet.rolling_points -= sum(frozen)  # still theirs until they are expired, as fixed-date points
    plan = plan_credit(
        wallet,
        now,
        amount=amount,
        kind=kind,
        reason=reason,
        source_service=source_service,
        expires_at=expires_at,
        regular_expiry_months=regular_expiry_months,
    )
    try:
        entry = await post_entry(
            session,
            wallet,
            kind="credit",
            postings=plan.postings,
            explanation=plan.explanation,
            source_service=source_service,
            source_ref=source_ref,
            now=now,
            lot=plan.lot,
            charge=charge,
        )
    except NotCharged as refused:
        # Nothing of this credit was written: its changes to the wallet in memory go too, so that
        # nothing the session flushes before the caller rolls back carries them.
        for column, value in before.items():
            setattr(wallet, column, value)
        assert charge is not None
        refuse_charge(charge, refused.used)
    event = credited_event(
        entry.entry_id, wallet, now, plan, reason=reason, source_service=source_service, source_ref=source_ref, key=key
    )
    await publish(session, "points.ledger.credited", event, member_id=member_id)
    count_on_commit(session, points_credited, amount, source_service)
    return Credited(entry_id=entry.entry_id, balance_after=wallet.available)


async def clawback(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    caller: str,
    request: ClawbackArgs,
    at_most: bool = False,
) -> ClawedBack:
    """Take back (part of) the points a service credited. Only points the member still benefits
    from are taken: points of the credit that expired are gone already. `at_most` takes what is
    left when the amount asked is more (a refund's share, after some of its points expired)."""
    target = request.target
    if target is None:
        raise InvalidArgument("name the credit_entry_id or the source_ref to claw back")
    if request.amount < 0:
        raise InvalidArgument("amount must be >= 0 (0 takes back everything not yet taken back)")
    service = request.source_service or caller
    if service != caller:
        raise PermissionDenied("a service can only claw back its own credits")
    query = select(Entry).where(Entry.kind == "credit")
    if target == "credit_entry_id":
        query = query.where(Entry.entry_id == request.credit_entry_id)
    else:
        query = query.where(Entry.source_service == service, Entry.source_ref == request.source_ref)
    credits = list((await session.exec(query.order_by(col(Entry.id)))).all())
    if not credits:
        raise NotFound("no credit matches the clawback target")
    if any(c.source_service != caller for c in credits):
        raise PermissionDenied("a service can only claw back its own credits")
    if wallet is None or any(c.member_id != wallet.member_id for c in credits):
        raise FailedPrecondition("the credits belong to several members")
    all_lots = await member_lots(session, wallet.member_id, with_empty=True)
    lots_by_entry = {lot.entry_pk: lot for lot in all_lots}
    lots_by_id = {lot.id: lot for lot in all_lots}
    credit_lots = [lots_by_entry[c.id] for c in credits if c.id in lots_by_entry]
    left_total = sum(ledger.clawable(lot.amount, lot.clawed_back, lot.expired) for lot in credit_lots)
    if left_total == 0:
        raise FailedPrecondition("nothing is left to claw back: it was clawed back or expired already")
    amount = min(request.amount, left_total) if at_most else request.amount
    amount = amount or left_total
    if amount > left_total:
        raise FailedPrecondition(f"amount {amount} exceeds the {left_total} points left to claw back")
    left, debt = amount, 0
    for credit_lot in credit_lots:
        share = min(ledger.clawable(credit_lot.amount, credit_lot.clawed_back, credit_lot.expired), left)
        if share == 0:
            continue
        left -= share
        credit_lot.clawed_back += share
        plan = ledger.plan_clawback(
            lot_state(credit_lot, wallet), (lot_state(lot, wallet) for lot in all_lots), share, now
        )
        for lot_id, take in plan.takes:
            lots_by_id[lot_id].remaining -= take
            count_lot_points(wallet, lots_by_id[lot_id].kind, lots_by_id[lot_id].rolling, -take)
            session.add(lots_by_id[lot_id])
        debt += plan.debt
        session.add(credit_lot)
    member = wallet.member_id
    reason = request.reason or f"Taken back by {service}"
    source_ref = request.source_ref or credits[0].source_ref
    entry = await post_entry(
        session,
        wallet,
        kind="clawback",
        postings={
            account_issued(service): amount,
            account_available(member): -(amount - debt),
            account_debt(member): -debt,
        },
        explanation=reason + (f" ({debt} points owed)" if debt else ""),
        source_service=service,
        source_ref=source_ref,
        now=now,
    )
    await publish(
        session,
        "points.ledger.clawed_back",
        ev.ClawedBack(
            entry_id=entry.entry_id,
            member_id=member,
            credit_entry_ids=[c.entry_id for c in credits],
            clawed_back=amount,
            debt_created=debt,
            source_service=service,
            source_ref=source_ref,
            balance_after=wallet.available,
            idempotency_key=request.idempotency_key,
            clawed_back_at=ts(now),
        ),
        member_id=member,
    )
    return ClawedBack(clawed_back=amount, debt_created=debt, entry_id=entry.entry_id, balance_after=wallet.available)
