"""Spending in two phases: Reserve holds points from the member's lots (limited-time first, then
the soonest to expire), Capture spends (part of) them, Void releases them, Refund returns spent
points to their lots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from kizuna.kit.events import publish
from kizuna.points.v1 import events_pb2 as ev
from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    any_,
    bindparam,
    case,
    column,
    false,
    func,
    insert,
    literal_column,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import select as core_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from points import ledger
from points.journal import HOLDS, LOTS, RESERVATIONS, flush_before_sql, new_id, post_entry, ts
from points.ledger import LIMITED_TIME, HoldState, LotState
from points.ledger_metrics import count_on_commit, points_spent
from points.models import (
    ACCOUNT_EXPIRED,
    Hold,
    Reservation,
    Wallet,
    account_available,
    account_debt,
    account_held,
    account_redeemed,
    lot_expiry,
)
from points.wallets import count_lot_points, expire_due_lots, expiry, lots_by_id, release, require_active


@dataclass(frozen=True)
class ReserveArgs:
    member_id: str
    amount: int
    ttl_seconds: int
    reason: str
    source_service: str
    source_ref: str
    idempotency_key: str


@dataclass(frozen=True)
class Reserved:
    reservation_id: str
    expires_at: datetime
    balance_after: int


@dataclass(frozen=True)
class CaptureArgs:
    reservation_id: str
    # 0 captures the whole reservation.
    amount: int
    idempotency_key: str


@dataclass(frozen=True)
class Captured:
    captured: int
    returned: int
    entry_id: str
    balance_after: int


@dataclass(frozen=True)
class VoidArgs:
    reservation_id: str
    idempotency_key: str


@dataclass(frozen=True)
class Voided:
    released: int
    balance_after: int


@dataclass(frozen=True)
class RefundArgs:
    # Which of capture_entry_id / reservation_id names the spend; None: neither.
    target: str | None
    capture_entry_id: str
    reservation_id: str
    # 0 refunds everything not yet refunded.
    amount: int
    reason: str
    idempotency_key: str


@dataclass(frozen=True)
class Refunded:
    refunded: int
    expired_not_returned: int
    entry_id: str
    balance_after: int


_INSERT_HOLD = insert(HOLDS)
_INSERT_RESERVATION = insert(RESERVATIONS).returning(RESERVATIONS.c.id)
# The member's live lots in spend order (limited-time first, then the soonest to expire; a rolling
# lot expires at the wallet's rolling expiry): Reserve reads the first FIRST_LOTS of them, which
# nearly always cover the amount, and all of them only when they do not, so its cost does not grow
# with the member's history of lots.
_LOT_EXPIRY = case(
    (LOTS.c.rolling.is_(True), bindparam("rolling", type_=LOTS.c.expires_at.type)), else_=LOTS.c.expires_at
)
_LIVE_LOTS = (
    core_select(LOTS.c.id, LOTS.c.kind, LOTS.c.rolling, LOTS.c.remaining, _LOT_EXPIRY.label("expires_at"))
    .where(
        LOTS.c.member_id == bindparam("member"),
        LOTS.c.remaining > 0,
        _LOT_EXPIRY > bindparam("now", type_=LOTS.c.expires_at.type),
    )
    .order_by(LOTS.c.kind != LIMITED_TIME, _LOT_EXPIRY, LOTS.c.id)
)
FIRST_LOTS = 16


def _first_of(
    *where: ColumnElement[bool], expiry: ColumnElement[Any], order: Sequence[ColumnElement[Any]]
) -> Select[Any]:
    """The member's first live lots of one kind of lot, in `order`, as a subquery's rows. `where`
    matches an index's own condition with literals (models._partial), so that a prepared statement's
    generic plan reads the index too."""
    first = (
        core_select(LOTS.c.id, LOTS.c.kind, LOTS.c.rolling, LOTS.c.remaining, expiry.label("expires_at"))
        .where(LOTS.c.remaining > literal_column("0"), *where)
        .where(expiry > bindparam("now", type_=LOTS.c.expires_at.type))
        .order_by(*order)
        .limit(bindparam("first"))
        .correlate_except(LOTS)  # the member from a LATERAL's outer row (_FIRST_LIVE_LOTS_PG)
        .subquery()
    )
    return core_select(first)


def _first_by_kind(member: ColumnElement[Any], rolling: ColumnElement[Any]) -> Select[Any]:
    """The member's first FIRST_LOTS live lots in spend order, read as the first of each kind of
    lot, each from an index in its own order: limited-time lots, then fixed-date regular lots, by
    expiry (`ix_points_lot_live`), and rolling lots, which all expire at the wallet's rolling expiry
    `rolling`, by id (`ix_points_lot_live_rolling`). Sorting every live lot of the member to keep
    sixteen made Reserve cost about 1.5x as much at 10,000 lots as at one (bench/README.md)."""
    # The member's rolling lots as a range of (member, id): with `member_id = :member`, `ORDER BY
    # id` is a primary-key order to the planner, which then walked the primary key past every other
    # member's lots (60,000 rows for one member's sixteen, 6 ms); a range keeps it on the index.
    rolling_range = and_(
        tuple_(LOTS.c.member_id, LOTS.c.id) >= tuple_(member, literal_column("0")),
        tuple_(LOTS.c.member_id, LOTS.c.id) <= tuple_(member, literal_column(str(2**63 - 1))),
    )
    by_expiry = (LOTS.c.expires_at, LOTS.c.id)
    fixed = (LOTS.c.member_id == member, LOTS.c.rolling == false())
    by_kind = union_all(
        _first_of(*fixed, LOTS.c.kind == LIMITED_TIME, expiry=LOTS.c.expires_at, order=by_expiry),
        _first_of(*fixed, LOTS.c.kind != LIMITED_TIME, expiry=LOTS.c.expires_at, order=by_expiry),
        _first_of(rolling_range, LOTS.c.rolling == true(), expiry=rolling, order=(LOTS.c.member_id, LOTS.c.id)),
    ).subquery()
    return (
        core_select(by_kind)
        .order_by(by_kind.c.kind != LIMITED_TIME, by_kind.c.expires_at, by_kind.c.id)
        .limit(bindparam("first"))
    )


_FIRST_LIVE_LOTS = _first_by_kind(bindparam("member"), bindparam("rolling", type_=LOTS.c.expires_at.type))
# PostgreSQL: the first live lots of several members in one statement (a Reserve group), each
# member's read as above, beside its wallet's rolling expiry.
_WALLETS = (
    func.unnest(bindparam("members", type_=ARRAY(String())), bindparam("rollings", type_=ARRAY(LOTS.c.expires_at.type)))
    .table_valued(column("member_id", String()), column("rolling", LOTS.c.expires_at.type))
    .render_derived(name="wallets")
)
_FIRST_OF_EACH = _first_by_kind(_WALLETS.c.member_id, _WALLETS.c.rolling).lateral("first")
_FIRST_LIVE_LOTS_PG = (
    core_select(_WALLETS.c.member_id.label("owner"), _FIRST_OF_EACH)
    .select_from(_WALLETS.join(_FIRST_OF_EACH, true()))
    .order_by(
        _WALLETS.c.member_id, _FIRST_OF_EACH.c.kind != LIMITED_TIME, _FIRST_OF_EACH.c.expires_at, _FIRST_OF_EACH.c.id
    )
)

# PostgreSQL: the reservation, what it takes from each lot and its holds (in spend order) in one
# round trip.
_RESERVE_PG = text("""
WITH reservation AS (
  INSERT INTO points_reservation (reservation_id, member_id, caller, amount, status, reason, source_service,
    source_ref, captured, refunded, created_at, expires_at)
  VALUES (:reservation_id, :member_id, :caller, :amount, 'open', :reason, :source_service, :source_ref, 0, 0,
    :created_at, :expires_at)
  RETURNING id
), takes AS (
  SELECT t.lot, t.points, t.n FROM unnest(:lots, :points) WITH ORDINALITY AS t(lot, points, n)
), taken AS (
  UPDATE points_lot SET remaining = points_lot.remaining - takes.points FROM takes WHERE points_lot.id = takes.lot
), holds AS (
  INSERT INTO points_hold (reservation_pk, lot_id, seq, amount, captured, refunded)
  SELECT reservation.id, takes.lot, takes.n - 1, takes.points, 0, 0 FROM reservation, takes ORDER BY takes.n
)
SELECT id FROM reservation""").bindparams(
    bindparam("amount", type_=BigInteger()),
    bindparam("created_at", type_=RESERVATIONS.c.created_at.type),
    bindparam("expires_at", type_=RESERVATIONS.c.expires_at.type),
    bindparam("lots", type_=ARRAY(Integer())),
    bindparam("points", type_=ARRAY(BigInteger())),
)
# PostgreSQL: a group of reservations, what they take from each lot (summed per lot beforehand) and
# their holds (in spend order) in one statement.
RESERVE_MANY_PG = text("""
WITH r AS (
  INSERT INTO points_reservation (reservation_id, member_id, caller, amount, status, reason, source_service,
    source_ref, captured, refunded, created_at, expires_at)
  SELECT u.reservation_id, u.member_id, u.caller, u.amount, 'open', u.reason, u.source_service, u.source_ref, 0, 0,
    :created_at, u.expires_at
  FROM unnest(:r_ids, :r_members, :r_callers, :r_amounts, :r_reasons, :r_services, :r_refs, :r_expires)
    WITH ORDINALITY AS u(reservation_id, member_id, caller, amount, reason, source_service, source_ref, expires_at, n)
  ORDER BY u.n
  RETURNING id, reservation_id
), taken AS (
  UPDATE points_lot SET remaining = points_lot.remaining - t.points FROM unnest(:t_lots, :t_points) AS t(lot, points)
  WHERE points_lot.id = t.lot
), holds AS (
  INSERT INTO points_hold (reservation_pk, lot_id, seq, amount, captured, refunded)
  SELECT r.id, h.lot, h.seq, h.points, 0, 0
  FROM unnest(:h_reservations, :h_lots, :h_seq, :h_points) WITH ORDINALITY AS h(rsv, lot, seq, points, n)
  JOIN r ON r.reservation_id = h.rsv ORDER BY h.n
)
SELECT count(*) FROM r""").bindparams(
    bindparam("created_at", type_=RESERVATIONS.c.created_at.type),
    bindparam("r_ids", type_=ARRAY(String())),
    bindparam("r_members", type_=ARRAY(String())),
    bindparam("r_callers", type_=ARRAY(String())),
    bindparam("r_amounts", type_=ARRAY(BigInteger())),
    bindparam("r_reasons", type_=ARRAY(String())),
    bindparam("r_services", type_=ARRAY(String())),
    bindparam("r_refs", type_=ARRAY(String())),
    bindparam("r_expires", type_=ARRAY(RESERVATIONS.c.expires_at.type)),
    bindparam("t_lots", type_=ARRAY(Integer())),
    bindparam("t_points", type_=ARRAY(BigInteger())),
    bindparam("h_reservations", type_=ARRAY(String())),
    bindparam("h_lots", type_=ARRAY(Integer())),
    bindparam("h_seq", type_=ARRAY(Integer())),
    bindparam("h_points", type_=ARRAY(BigInteger())),
)
_TAKE_FROM_LOT = (
    update(LOTS).where(LOTS.c.id == bindparam("lot")).values(remaining=LOTS.c.remaining - bindparam("points"))
)
_RETURN_TO_LOT = (
    update(LOTS).where(LOTS.c.id == bindparam("lot")).values(remaining=LOTS.c.remaining + bindparam("points"))
)


def _reservations_with_holds(which: ColumnElement[bool]) -> Select[Any]:
    """Reservations and their holds (in spend order) with their lots, one row per hold, in one read."""
    return (
        core_select(
            RESERVATIONS,
            HOLDS.c.lot_id,
            HOLDS.c.amount.label("hold_amount"),
            LOTS.c.expires_at.label("lot_expires_at"),
            LOTS.c.kind.label("lot_kind"),
            LOTS.c.rolling.label("lot_rolling"),
        )
        .select_from(RESERVATIONS)
        .outerjoin(HOLDS, HOLDS.c.reservation_pk == RESERVATIONS.c.id)
        .outerjoin(LOTS, LOTS.c.id == HOLDS.c.lot_id)
        .where(which)
        .order_by(RESERVATIONS.c.id, HOLDS.c.seq)
    )


_RESERVATION_WITH_HOLDS = _reservations_with_holds(RESERVATIONS.c.reservation_id == bindparam("reservation"))
# Several reservations at once (a group of captures), and whose they are.
RESERVATIONS_WITH_HOLDS = _reservations_with_holds(
    RESERVATIONS.c.reservation_id == any_(bindparam("reservations", type_=ARRAY(String())))
)
OWNERS = core_select(RESERVATIONS.c.reservation_id, RESERVATIONS.c.member_id).where(
    RESERVATIONS.c.reservation_id == any_(bindparam("reservations", type_=ARRAY(String())))
)
# PostgreSQL: a group of captures' holds, the points returned to lots and the reservations marked
# captured, in one statement (the lots' returns summed per lot beforehand).
CAPTURE_MANY_PG = text("""
WITH holds AS (
  UPDATE points_hold SET captured = h.points FROM unnest(:h_reservations, :h_lots, :h_points) AS h(rsv, lot, points)
  WHERE points_hold.reservation_pk = h.rsv AND points_hold.lot_id = h.lot
), back AS (
  UPDATE points_lot SET remaining = points_lot.remaining + b.points FROM unnest(:b_lots, :b_points) AS b(lot, points)
  WHERE points_lot.id = b.lot
), marked AS (
  UPDATE points_reservation SET status = 'captured', captured = m.points, capture_entry_id = m.entry
  FROM unnest(:m_reservations, :m_points, :m_entries) AS m(rsv, points, entry) WHERE points_reservation.id = m.rsv
  RETURNING 1
)
SELECT count(*) FROM marked""").bindparams(
    bindparam("h_reservations", type_=ARRAY(Integer())),
    bindparam("h_lots", type_=ARRAY(Integer())),
    bindparam("h_points", type_=ARRAY(BigInteger())),
    bindparam("b_lots", type_=ARRAY(Integer())),
    bindparam("b_points", type_=ARRAY(BigInteger())),
    bindparam("m_reservations", type_=ARRAY(Integer())),
    bindparam("m_points", type_=ARRAY(BigInteger())),
    bindparam("m_entries", type_=ARRAY(String())),
)
_CAPTURE_HOLD = (
    update(HOLDS)
    .where(HOLDS.c.reservation_pk == bindparam("reservation"), HOLDS.c.lot_id == bindparam("lot"))
    .values(captured=bindparam("points"))
)
_MARK_CAPTURED = (
    update(RESERVATIONS)
    .where(RESERVATIONS.c.id == bindparam("reservation"))
    .values(status="captured", captured=bindparam("points"), capture_entry_id=bindparam("entry"))
)


def check_reserve(request: ReserveArgs, max_ttl: int) -> None:
    if request.amount <= 0:
        raise InvalidArgument("amount must be > 0")
    if request.ttl_seconds < 0 or request.ttl_seconds > max_ttl:
        raise InvalidArgument(f"ttl_seconds must be between 0 and {max_ttl}")


async def first_live_lots(session: AsyncSession, wallet: Wallet, now: datetime, *, every: bool = False) -> list[Any]:
    """The member's first FIRST_LOTS live lots in spend order (all of them with `every`)."""
    conn = await session.connection()
    # A rolling lot follows the wallet's rolling expiry (None: the member has no rolling lots).
    params = {"member": wallet.member_id, "now": now, "rolling": wallet.rolling_expires_at or now}
    if every:
        return list((await conn.execute(_LIVE_LOTS, params)).all())
    return list((await conn.execute(_FIRST_LIVE_LOTS, {**params, "first": FIRST_LOTS})).all())


async def first_live_lots_of(session: AsyncSession, wallets: list[Wallet], now: datetime) -> dict[str, list[Any]]:
    """`first_live_lots` of several wallets in one round trip (PostgreSQL), by member."""
    conn = await session.connection()
    params = {
        "members": [wallet.member_id for wallet in wallets],
        "rollings": [wallet.rolling_expires_at or now for wallet in wallets],
        "now": now,
        "first": FIRST_LOTS,
    }
    lots: dict[str, list[Any]] = {wallet.member_id: [] for wallet in wallets}
    for row in await conn.execute(_FIRST_LIVE_LOTS_PG, params):
        lots[row.owner].append(row)
    return lots


def reserved_event(
    reservation_id: str,
    wallet: Wallet,
    now: datetime,
    expires_at: datetime,
    *,
    source_service: str,
    request: ReserveArgs,
) -> ev.Reserved:
    return ev.Reserved(
        reservation_id=reservation_id,
        member_id=wallet.member_id,
        amount=request.amount,
        reason=request.reason,
        source_service=source_service,
        source_ref=request.source_ref,
        expires_at=ts(expires_at),
        balance_after=wallet.available,
        idempotency_key=request.idempotency_key,
        reserved_at=ts(now),
    )


def hold_postings(wallet: Wallet, amount: int) -> dict[str, int]:
    return {account_available(wallet.member_id): -amount, account_held(wallet.member_id): amount}


async def reserve(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    caller: str,
    request: ReserveArgs,
    default_ttl: int,
    max_ttl: int,
) -> Reserved:
    check_reserve(request, max_ttl)
    wallet = require_active(wallet, request.member_id)
    await flush_before_sql(session, wallet)
    conn = await session.connection()
    rows = await first_live_lots(session, wallet, now)
    if len(rows) == FIRST_LOTS and sum(row.remaining for row in rows) < request.amount:
        rows = await first_live_lots(session, wallet, now, every=True)
    lots = [LotState(row.id, row.kind, row.remaining, row.expires_at) for row in rows]
    takes = ledger.allocate(lots, request.amount, now)
    kinds = {row.id: (row.kind, row.rolling) for row in rows}
    for lot_id, take in takes:
        count_lot_points(wallet, *kinds[lot_id], -take)
    expires_at = now + timedelta(seconds=request.ttl_seconds or default_ttl)
    reservation_id = new_id("rsv")
    source_service = request.source_service or caller
    values = {
        "reservation_id": reservation_id,
        "member_id": wallet.member_id,
        "caller": caller,
        "amount": request.amount,
        "reason": request.reason,
        "source_service": source_service,
        "source_ref": request.source_ref,
        "created_at": now,
        "expires_at": expires_at,
    }
    if conn.dialect.name == "postgresql":
        lots_taken = [lot_id for lot_id, _ in takes]
        points_taken = [take for _, take in takes]
        await conn.execute(_RESERVE_PG, {**values, "lots": lots_taken, "points": points_taken})
    else:
        values.update(status="open", captured=0, refunded=0)
        reservation_pk = (await conn.execute(_INSERT_RESERVATION, values)).scalar_one()
        await conn.execute(_TAKE_FROM_LOT, [{"lot": lot_id, "points": take} for lot_id, take in takes])
        holds = [
            {
                "reservation_pk": reservation_pk,
                "lot_id": lot_id,
                "seq": seq,
                "amount": take,
                "captured": 0,
                "refunded": 0,
            }
            for seq, (lot_id, take) in enumerate(takes)
        ]
        await conn.execute(_INSERT_HOLD, holds)
    await post_entry(
        session,
        wallet,
        kind="hold",
        postings=hold_postings(wallet, request.amount),
        explanation=f"Hold: {request.reason}",
        source_service=source_service,
        source_ref=request.source_ref,
        now=now,
    )
    event = reserved_event(reservation_id, wallet, now, expires_at, source_service=source_service, request=request)
    await publish(session, "points.ledger.reserved", event, member_id=wallet.member_id)
    return Reserved(reservation_id=reservation_id, expires_at=expires_at, balance_after=wallet.available)


async def _reservation(
    session: AsyncSession, caller: str, *, reservation_id: str = "", capture_entry_id: str = ""
) -> Reservation:
    query = select(Reservation).execution_options(populate_existing=True)
    if capture_entry_id:
        query = query.where(Reservation.capture_entry_id == capture_entry_id)
    else:
        query = query.where(Reservation.reservation_id == reservation_id)
    reservation = (await session.exec(query)).first()
    if reservation is None:
        raise NotFound(f"unknown reservation {reservation_id or capture_entry_id!r}")
    if reservation.caller != caller:
        raise PermissionDenied("only the service that made the reservation may use it")
    return reservation


async def _holds(session: AsyncSession, reservation: Reservation) -> list[Hold]:
    return list(
        (
            await session.exec(
                select(Hold)
                .where(Hold.reservation_pk == reservation.id)
                .order_by(col(Hold.seq))
                .execution_options(populate_existing=True)
            )
        ).all()
    )


class CapturePlan(NamedTuple):
    """What a capture does, decided before anything changes."""

    reservation: Any  # the reservation's row (with its first hold's columns)
    amount: int  # captured
    returned: int  # back to the member (some of it may repay debt)
    repaid: int
    holds: list[tuple[int, int]]  # (lot, captured) per hold
    back: list[tuple[int, int]]  # (lot, points back into it)
    kinds: dict[int, tuple[str, bool]]  # lot -> (kind, rolling)
    postings: dict[str, int]
    explanation: str
    # Returned points went into a lot that expired meanwhile: it is expired after the capture.
    into_expired: bool


def plan_capture(
    rows: Sequence[Any], wallet: Wallet | None, now: datetime, *, caller: str, request: CaptureArgs
) -> CapturePlan:
    """Check a capture against its reservation (`_RESERVATION_WITH_HOLDS` rows, one per hold) and
    plan it; nothing changes here."""
    if request.amount < 0:
        raise InvalidArgument("amount must be >= 0 (0 captures the whole reservation)")
    reservation = rows[0] if rows else None
    if reservation is None:
        raise NotFound(f"unknown reservation {request.reservation_id!r}")
    if reservation.caller != caller:
        raise PermissionDenied("only the service that made the reservation may use it")
    if reservation.status == "captured":
        raise FailedPrecondition("the reservation was already captured")
    if reservation.status == "timed_out" or (reservation.status == "open" and reservation.expires_at <= now):
        raise FailedPrecondition("the reservation has expired")
    if reservation.status == "voided":
        raise FailedPrecondition("the reservation was voided")
    amount = request.amount or reservation.amount
    if amount > reservation.amount:
        raise InvalidArgument(f"amount {amount} exceeds the reserved {reservation.amount}")
    assert wallet is not None
    holds = [row for row in rows if row.lot_id is not None]
    rolling = wallet.rolling_expires_at
    expiries = [lot_expiry(h.lot_rolling, h.lot_expires_at, rolling) for h in holds]
    split = ledger.split_capture([HoldState(h.lot_id, h.hold_amount) for h in holds], amount)
    back, repaid = ledger.repay_debt_first(
        [(lot_id, points, at) for at, (lot_id, _, points) in zip(expiries, split, strict=True) if points > 0],
        wallet.debt,
        now,
    )
    returned = reservation.amount - amount
    member = wallet.member_id
    spent = reservation.reason or f"Spent at {reservation.source_service}"
    return CapturePlan(
        reservation=reservation,
        amount=amount,
        returned=returned,
        repaid=repaid,
        holds=[(lot_id, captured) for lot_id, captured, _ in split],
        back=back,
        kinds={h.lot_id: (h.lot_kind, h.lot_rolling) for h in holds},
        postings={
            account_held(member): -reservation.amount,
            account_redeemed(reservation.source_service): amount,
            account_available(member): returned - repaid,
            account_debt(member): repaid,
        },
        explanation=spent + (f" ({repaid} of the points returned repaid debt)" if repaid else ""),
        into_expired=any(at <= now for at, (_, _, points) in zip(expiries, split, strict=True) if points > 0),
    )


def count_returns(wallet: Wallet, plan: CapturePlan) -> None:
    """The wallet's split of its points as the capture's returns go back into their lots."""
    for lot_id, points in plan.back:
        count_lot_points(wallet, *plan.kinds[lot_id], points)


def captured_event(
    entry_id: str, wallet: Wallet, now: datetime, plan: CapturePlan, *, key: str, with_reservation_id: bool = True
) -> ev.Captured:
    reservation = plan.reservation
    return ev.Captured(
        entry_id=entry_id,
        reservation_id=reservation.reservation_id if with_reservation_id else "",
        member_id=wallet.member_id,
        captured=plan.amount,
        returned=plan.returned,
        source_service=reservation.source_service,
        source_ref=reservation.source_ref,
        balance_after=wallet.available,
        idempotency_key=key,
        captured_at=ts(now),
    )


async def capture(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    caller: str,
    request: CaptureArgs,
    event_reservation_id: bool = True,
) -> Captured:
    """Spend (part of) a reservation; the rest returns to its lots. `event_reservation_id=False`
    leaves the Captured event's reservation_id empty (spends by command have no reservation)."""
    if request.amount < 0:
        raise InvalidArgument("amount must be >= 0 (0 captures the whole reservation)")
    await flush_before_sql(session, wallet)
    conn = await session.connection()
    rows = (await conn.execute(_RESERVATION_WITH_HOLDS, {"reservation": request.reservation_id})).all()
    plan = plan_capture(rows, wallet, now, caller=caller, request=request)
    assert wallet is not None
    reservation = plan.reservation
    await conn.execute(
        _CAPTURE_HOLD,
        [{"reservation": reservation.id, "lot": lot_id, "points": points} for lot_id, points in plan.holds],
    )
    count_returns(wallet, plan)
    returns = [{"lot": lot_id, "points": points} for lot_id, points in plan.back if points > 0]
    if returns:
        await conn.execute(_RETURN_TO_LOT, returns)
    entry = await post_entry(
        session,
        wallet,
        kind="spend",
        postings=plan.postings,
        explanation=plan.explanation,
        source_service=reservation.source_service,
        source_ref=reservation.source_ref,
        now=now,
    )
    await conn.execute(_MARK_CAPTURED, {"reservation": reservation.id, "points": plan.amount, "entry": entry.entry_id})
    if plan.into_expired:
        await expire_due_lots(session, wallet, now)  # returned points of a lot that expired meanwhile
    event = captured_event(
        entry.entry_id, wallet, now, plan, key=request.idempotency_key, with_reservation_id=event_reservation_id
    )
    await publish(session, "points.ledger.captured", event, member_id=wallet.member_id)
    count_on_commit(session, points_spent, plan.amount, reservation.source_service)
    return Captured(
        captured=plan.amount, returned=plan.returned, entry_id=entry.entry_id, balance_after=wallet.available
    )


async def void(
    session: AsyncSession, wallet: Wallet | None, now: datetime, *, caller: str, request: VoidArgs
) -> Voided:
    reservation = await _reservation(session, caller, reservation_id=request.reservation_id)
    assert wallet is not None
    if reservation.status == "captured":
        raise FailedPrecondition("the reservation was captured; use Refund")
    released = 0
    if reservation.status == "open":
        released = await release(session, wallet, reservation, "requested", request.idempotency_key, now)
        await expire_due_lots(session, wallet, now)
    return Voided(released=released, balance_after=wallet.available)


async def refund(
    session: AsyncSession, wallet: Wallet | None, now: datetime, *, caller: str, request: RefundArgs
) -> Refunded:
    target = request.target
    if target is None:
        raise InvalidArgument("name the capture_entry_id or the reservation_id to refund")
    if request.amount < 0:
        raise InvalidArgument("amount must be >= 0 (0 refunds everything left)")
    reservation = await _reservation(
        session, caller, reservation_id=request.reservation_id, capture_entry_id=request.capture_entry_id
    )
    if reservation.status != "captured":
        raise FailedPrecondition("only a captured reservation can be refunded")
    left = reservation.captured - reservation.refunded
    if left == 0:
        raise FailedPrecondition("nothing is left to refund")
    amount = request.amount or left
    if amount > left:
        raise FailedPrecondition(f"amount {amount} exceeds the {left} points left to refund")
    assert wallet is not None
    holds = await _holds(session, reservation)
    lots = await lots_by_id(session, [h.lot_id for h in holds])
    plan = ledger.plan_refund(
        [HoldState(h.lot_id, h.amount, h.captured, h.refunded, expiry(lots[h.lot_id], wallet)) for h in holds],
        amount,
        now,
    )
    by_lot = {h.lot_id: h for h in holds}
    back_to_lots, repaid = ledger.repay_debt_first(
        [(lot_id, back, expiry(lots[lot_id], wallet)) for lot_id, back, _ in plan if back > 0], wallet.debt, now
    )
    returned = lost = 0
    for lot_id, back, gone in plan:
        by_lot[lot_id].refunded += back + gone
        lots[lot_id].expired += gone
        session.add_all([by_lot[lot_id], lots[lot_id]])
        returned, lost = returned + back, lost + gone
    for lot_id, points in back_to_lots:
        lots[lot_id].remaining += points
        count_lot_points(wallet, lots[lot_id].kind, lots[lot_id].rolling, points)
    reservation.refunded += amount
    session.add(reservation)
    member = wallet.member_id
    reason = request.reason or f"Refund from {reservation.source_service}"
    notes = []
    if lost:
        notes.append(f"{lost} points had expired and did not return")
    if repaid:
        notes.append(f"{repaid} repaid debt")
    entry = await post_entry(
        session,
        wallet,
        kind="refund",
        postings={
            account_redeemed(reservation.source_service): -amount,
            account_available(member): returned - repaid,
            account_debt(member): repaid,
            ACCOUNT_EXPIRED: lost,
        },
        explanation=reason + (f" ({'; '.join(notes)})" if notes else ""),
        source_service=reservation.source_service,
        source_ref=reservation.source_ref,
        now=now,
    )
    await publish(
        session,
        "points.ledger.refunded",
        ev.Refunded(
            entry_id=entry.entry_id,
            member_id=member,
            capture_entry_id=reservation.capture_entry_id or "",
            reservation_id=reservation.reservation_id,
            refunded=returned,
            expired_not_returned=lost,
            source_service=reservation.source_service,
            source_ref=reservation.source_ref,
            balance_after=wallet.available,
            idempotency_key=request.idempotency_key,
            refunded_at=ts(now),
        ),
        member_id=member,
    )
    return Refunded(
        refunded=returned, expired_not_returned=lost, entry_id=entry.entry_id, balance_after=wallet.available
    )
