"""Member wallets, the lock every change to a member's points takes first (`SELECT ... FOR UPDATE`
on PostgreSQL; SQLite serializes writers with BEGIN IMMEDIATE), and settling what fell due under
that lock: timed-out reservations and expired lots."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from kizuna.kit.db import OnDriver, attach, flush_pending, unattached
from kizuna.kit.errors import FailedPrecondition, NotFound
from kizuna.kit.events import publish
from kizuna.points.v1 import events_pb2 as ev
from sqlalchemy import ARRAY, String, and_, any_, bindparam, exists, or_, text
from sqlalchemy import select as core_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from points import ledger
from points.journal import LOT_KIND, LOTS, RECORDS, RESERVATIONS, WALLETS, post_entry, ts
from points.ledger import LIMITED_TIME, LotState
from points.models import (
    ACCOUNT_EXPIRED,
    Hold,
    Lot,
    Reservation,
    Wallet,
    account_available,
    account_debt,
    account_held,
    lot_expiry,
)


async def lock_wallet(session: AsyncSession, member_id: str, *, skip_locked: bool = False) -> Wallet | None:
    """The member's wallet row, locked for this transaction (None if unknown, or busy with skip_locked)."""
    query = select(Wallet).where(Wallet.member_id == member_id)
    query = query.with_for_update(skip_locked=skip_locked).execution_options(populate_existing=True)
    return (await session.exec(query)).first()


class Member(NamedTuple):
    """Whose wallet an operation locks: a member id, or the member of a reservation (or of its capture)."""

    member_id: str = ""
    reservation_id: str = ""


class Locked(NamedTuple):
    wallet: Wallet | None
    due: bool
    record: Any  # the idempotency record row (operation, request_hash, response, error_code, error_message)


_RECORD_COLUMNS = (
    RECORDS.c.operation,
    RECORDS.c.request_hash,
    RECORDS.c.response,
    RECORDS.c.error_code,
    RECORDS.c.error_message,
)


def _due_columns() -> tuple[Any, Any]:
    """Whether anything of the wallet's member is due at `now` (bind parameter): a timed-out
    reservation (due_r), an expired lot (due_l)."""
    now = bindparam("now", type_=LOTS.c.expires_at.type)
    due_reservation = exists().where(
        RESERVATIONS.c.member_id == Wallet.member_id, RESERVATIONS.c.status == "open", RESERVATIONS.c.expires_at <= now
    )
    # A fixed-date lot past its date, or rolling lots past the wallet's rolling expiry: each an
    # index range of ix_points_lot_member_rolling, however long the member's history.
    due_fixed = exists().where(
        LOTS.c.member_id == Wallet.member_id, LOTS.c.rolling.is_(False), LOTS.c.expires_at <= now, LOTS.c.remaining > 0
    )
    due_rolling = and_(
        col(Wallet.rolling_expires_at) <= now,
        exists().where(LOTS.c.member_id == Wallet.member_id, LOTS.c.rolling.is_(True), LOTS.c.remaining > 0),
    )
    return due_reservation.label("due_r"), or_(due_fixed, due_rolling).label("due_l")


def _lock_query(by_reservation: bool) -> OnDriver:
    """Lock the member's wallet, learn whether anything is due, and fetch the idempotency record of
    (caller, key): one statement, built once (bind parameters: member, caller, key, now). Core: the
    wallet's columns, made the session's entity by `attach`."""
    if by_reservation:
        owner: Any = (
            core_select(RESERVATIONS.c.member_id)
            .where(
                or_(
                    RESERVATIONS.c.reservation_id == bindparam("member"),
                    RESERVATIONS.c.capture_entry_id == bindparam("member"),
                )
            )
            .limit(1)
            .scalar_subquery()
        )
    else:
        owner = bindparam("member")
    statement = (
        core_select(*WALLETS.c, *_due_columns(), *_RECORD_COLUMNS)
        .select_from(WALLETS)
        .outerjoin(RECORDS, and_(RECORDS.c.caller == bindparam("caller"), RECORDS.c.key == bindparam("key")))
        .where(WALLETS.c.member_id == owner)
        .with_for_update(of=WALLETS)
    )
    return OnDriver(statement, "SELECT points_wallet FOR UPDATE")


_LOCK_BY_MEMBER = _lock_query(False)
_LOCK_BY_RESERVATION = _lock_query(True)
_RECORD_QUERY = core_select(*_RECORD_COLUMNS).where(
    RECORDS.c.caller == bindparam("caller"), RECORDS.c.key == bindparam("key")
)
# Several wallets, locked in member order: two transactions locking wallets this way never wait on
# each other in a cycle (every other lock takes one wallet).
_LOCK_MANY = OnDriver(
    core_select(*WALLETS.c, *_due_columns())
    .where(WALLETS.c.member_id == any_(bindparam("members", type_=ARRAY(String()))))
    .order_by(WALLETS.c.member_id)
    .with_for_update(of=WALLETS),
    "SELECT points_wallet FOR UPDATE",
)
# The idempotency records of several (caller, key) pairs.
_RECORDS_MANY = OnDriver(
    text("""SELECT r.caller, r.key, r.operation, r.request_hash, r.response, r.error_code, r.error_message
FROM unnest(:callers, :keys) AS k(caller, key)
JOIN points_idempotency r ON r.caller = k.caller AND r.key = k.key""").bindparams(
        bindparam("callers", type_=ARRAY(String())), bindparam("keys", type_=ARRAY(String()))
    ),
    "SELECT points_idempotency",
)


async def lock_wallets(session: AsyncSession, members: list[str], now: datetime) -> dict[str, tuple[Wallet, bool]]:
    """The wallets of those members that have one, locked, each with whether anything is due: a
    group's (group_commit), in no session, so that only the group's own statement writes them
    (`post_entries_pg`). On the driver's connection: SQLAlchemy's execution, the ORM's loading and
    the session's bookkeeping of a group's wallets cost more CPU than its statements."""
    rows = await _LOCK_MANY.fetch(session, {"members": sorted(set(members)), "now": now})
    return {row.member_id: (unattached(Wallet, row), bool(row.due_r or row.due_l)) for row in rows}


async def records_of(session: AsyncSession, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """The idempotency records of (caller, key) pairs, where there are any."""
    params = {"callers": [caller for caller, _ in pairs], "keys": [key for _, key in pairs]}
    return {(row.caller, row.key): row for row in await _RECORDS_MANY.fetch(session, params)}


async def lock_for_operation(session: AsyncSession, member: Member, caller: str, key: str, now: datetime) -> Locked:
    """One round trip: lock the member's wallet, learn whether anything is due (timed-out
    reservations, expired lots), and fetch the idempotency record of (caller, key)."""
    query = _LOCK_BY_RESERVATION if member.reservation_id else _LOCK_BY_MEMBER
    params = {"member": member.reservation_id or member.member_id, "caller": caller, "key": key, "now": now}
    await flush_pending(session)
    rows = await query.fetch(session, params)
    if not rows:
        conn = await session.connection()
        record = (await conn.execute(_RECORD_QUERY, {"caller": caller, "key": key})).first()
        return Locked(None, False, record)
    row = rows[0]
    return Locked(
        attach(session, Wallet, row), bool(row.due_r or row.due_l), row if row.operation is not None else None
    )


async def register_member(session: AsyncSession, member_id: str, now: datetime) -> Wallet:
    """Open the member's wallet (idempotent)."""
    wallet = await lock_wallet(session, member_id)
    if wallet is None:
        wallet = Wallet(
            member_id=member_id,
            status="active",
            available=0,
            held=0,
            debt=0,
            earn_month=ledger.month_key(now),
            earned_this_month=0,
            created_at=now,
        )
        session.add(wallet)
        await session.flush()
    return wallet


class UnknownMember(NotFound):
    """Points has no wallet for the member (yet: identity's member.registered may still be on its
    way). Refused WITHOUT being remembered under the idempotency key, so the producer's retry with
    the same key succeeds once the member is known."""


class OverBudget(FailedPrecondition):
    """The service's daily credit budget would be breached. Not remembered either: the same key
    may succeed once the budget allows it (the next UTC day, or a raised budget)."""


# Refusals that depend on time, not on the request: never remembered under a key.
NOT_REMEMBERED = (UnknownMember, OverBudget)


def require_active(wallet: Wallet | None, member_id: str) -> Wallet:
    if wallet is None:
        raise UnknownMember(f"unknown member {member_id!r}")
    if wallet.status != "active":
        raise NotFound(f"member {member_id!r} is not active")
    return wallet


async def member_lots(session: AsyncSession, member_id: str, *, with_empty: bool = False) -> list[Lot]:
    query = select(Lot).where(Lot.member_id == member_id)
    if not with_empty:
        query = query.where(col(Lot.remaining) > 0)
    return list((await session.exec(query.execution_options(populate_existing=True))).all())


async def lots_by_id(session: AsyncSession, ids: list[int]) -> dict[int, Lot]:
    """The lots a reservation holds points of, by id (not the member's whole history)."""
    if not ids:
        return {}
    query = select(Lot).where(col(Lot.id).in_(ids)).execution_options(populate_existing=True)
    return {lot.id: lot for lot in (await session.exec(query)).all() if lot.id is not None}


def count_lot_points(wallet: Wallet, kind: str, rolling: bool, points: int) -> None:
    """Keep the wallet's split of its points up to date as `points` go into a lot of this kind
    (negative: out of it); `available` itself moves with the entry's postings."""
    if kind == LIMITED_TIME:
        wallet.limited_time += points
    if rolling:
        wallet.rolling_points += points


def expiry(lot: Lot, wallet: Wallet) -> datetime:
    """When the lot expires (a rolling lot: its wallet's rolling expiry)."""
    return lot_expiry(lot.rolling, lot.expires_at, wallet.rolling_expires_at)


def lot_state(lot: Lot, wallet: Wallet) -> LotState:
    assert lot.id is not None
    return LotState(lot.id, lot.kind, lot.remaining, expiry(lot, wallet))


# ---- settling what is due: timed-out reservations, expired lots --------------------------------


async def settle_due(session: AsyncSession, wallet: Wallet, now: datetime) -> None:
    """Release the member's timed-out reservations, then expire their lots that are due."""
    due = (
        await session.exec(
            select(Reservation).where(
                Reservation.member_id == wallet.member_id,
                Reservation.status == "open",
                col(Reservation.expires_at) <= now,
            )
        )
    ).all()
    for reservation in due:
        await release(session, wallet, reservation, "timed_out", "", now)
    await expire_due_lots(session, wallet, now)


def _due(wallet: Wallet, now: datetime) -> Any:
    """Which of the wallet's lots with points left are due to expire at `now`."""
    fixed = and_(col(Lot.rolling).is_(False), col(Lot.expires_at) <= now)
    if wallet.rolling_expires_at is not None and wallet.rolling_expires_at <= now:
        return or_(fixed, col(Lot.rolling).is_(True))
    return fixed


async def expire_due_lots(session: AsyncSession, wallet: Wallet, now: datetime) -> int:
    lots = (
        await session.exec(
            select(Lot)
            .where(Lot.member_id == wallet.member_id, col(Lot.remaining) > 0, _due(wallet, now))
            .order_by(col(Lot.id))
            .execution_options(populate_existing=True)
        )
    ).all()
    for lot in lots:
        amount, lot.remaining = lot.remaining, 0
        lot.expired += amount
        count_lot_points(wallet, lot.kind, lot.rolling, -amount)
        session.add(lot)
        entry = await post_entry(
            session,
            wallet,
            kind="expiry",
            postings={account_available(wallet.member_id): -amount, ACCOUNT_EXPIRED: amount},
            explanation=f"{amount} {'limited-time' if lot.kind == LIMITED_TIME else 'regular'} points expired",
            source_service="points",
            source_ref="",
            now=now,
        )
        await publish(
            session,
            "points.ledger.expired",
            ev.Expired(
                entry_id=entry.entry_id,
                member_id=wallet.member_id,
                amount=amount,
                kind=LOT_KIND[lot.kind],
                balance_after=wallet.available,
                expired_at=ts(expiry(lot, wallet)),
            ),
            member_id=wallet.member_id,
        )
    return len(lots)


async def release(
    session: AsyncSession, wallet: Wallet, reservation: Reservation, cause: str, key: str, now: datetime
) -> int:
    """Return an open reservation's points to their lots; returns how many."""
    holds = (
        await session.exec(select(Hold).where(Hold.reservation_pk == reservation.id).order_by(col(Hold.seq)))
    ).all()
    lots = await lots_by_id(session, [hold.lot_id for hold in holds])
    back, repaid = ledger.repay_debt_first(
        [(hold.lot_id, hold.amount, expiry(lots[hold.lot_id], wallet)) for hold in holds], wallet.debt, now
    )
    for lot_id, points in back:
        lots[lot_id].remaining += points
        count_lot_points(wallet, lots[lot_id].kind, lots[lot_id].rolling, points)
        session.add(lots[lot_id])
    reservation.status = "voided" if cause == "requested" else "timed_out"
    session.add(reservation)
    member = wallet.member_id
    await post_entry(
        session,
        wallet,
        kind="release",
        postings={
            account_held(member): -reservation.amount,
            account_available(member): reservation.amount - repaid,
            account_debt(member): repaid,
        },
        explanation=f"Released hold: {reservation.reason}" + (f" ({repaid} repaid debt)" if repaid else ""),
        source_service=reservation.source_service,
        source_ref=reservation.source_ref,
        now=now,
    )
    await publish(
        session,
        "points.ledger.voided",
        ev.Voided(
            reservation_id=reservation.reservation_id,
            member_id=wallet.member_id,
            released=reservation.amount,
            cause=ev.VOID_CAUSE_REQUESTED if cause == "requested" else ev.VOID_CAUSE_TIMED_OUT,
            source_service=reservation.source_service,
            source_ref=reservation.source_ref,
            balance_after=wallet.available,
            idempotency_key=key,
            voided_at=ts(now),
        ),
        member_id=wallet.member_id,
    )
    return int(reservation.amount)


async def members_with_due(session: AsyncSession, now: datetime, limit: int) -> list[str]:
    lots = select(Lot.member_id).where(col(Lot.rolling).is_(False), col(Lot.remaining) > 0, col(Lot.expires_at) <= now)
    rolling = select(Wallet.member_id).where(
        col(Wallet.rolling_expires_at) <= now,
        exists().where(LOTS.c.member_id == Wallet.member_id, LOTS.c.rolling.is_(True), LOTS.c.remaining > 0),
    )
    reservations = select(Reservation.member_id).where(Reservation.status == "open", col(Reservation.expires_at) <= now)
    found = set((await session.exec(lots.distinct().limit(limit))).all())
    found |= set((await session.exec(reservations.distinct().limit(limit))).all())
    found |= set((await session.exec(rolling.limit(limit))).all())
    return sorted(found)[:limit]
