"""Reads: the member's balance and history, each one autocommit statement (the history's first page
adds the open holds and pending earnings); only a balance with something due settles first."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from kizuna.kit.db import Database, UTCDateTime, is_disconnect
from kizuna.kit.errors import InvalidArgument
from kizuna.kit.groups import GroupQueue
from kizuna.kit.telemetry import exporting
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from sqlalchemy import BigInteger, Boolean, bindparam, text
from sqlalchemy import select as core_select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from points.explain import Speaker
from points.journal import ENTRIES, MAX_PAGE, PENDING, RESERVATIONS, VISIBLE_KINDS
from points.wallets import lock_wallet, settle_due

T = TypeVar("T")
tracer = trace.get_tracer("kizuna.points")

_BALANCE_COLUMNS: dict[str, Any] = {
    "available": BigInteger(),
    "held": BigInteger(),
    "debt": BigInteger(),
    "limited_time": BigInteger(),
    "rolling_points": BigInteger(),
    "rolling_expires_at": UTCDateTime(),
    "earning": BigInteger(),
    "due": Boolean(),
    "fixed_at": UTCDateTime(),
    "fixed_points": BigInteger(),
}

# The balance from the wallet row (its primary key), its soonest-expiring fixed-date lots and
# whether a reservation timed out: index lookups of live rows only (partial indexes, spelled with
# literals so that a prepared statement's generic plan uses them), whatever the member's history.
_BALANCE_QUERY = (
    text("""
SELECT w.available, w.held, w.debt, w.limited_time, w.rolling_points, w.rolling_expires_at,
  (SELECT coalesce(sum(p.regular + p.bonus + p.merchant_bonus), 0) FROM points_pending_earn p
    WHERE p.member_id = w.member_id AND p.status = 'pending') AS earning,
  EXISTS (SELECT 1 FROM points_reservation r
    WHERE r.member_id = w.member_id AND r.status = 'open' AND r.expires_at <= :now) AS due,
  f.expires_at AS fixed_at, f.points AS fixed_points
FROM points_wallet w LEFT JOIN (
  SELECT l.expires_at, sum(l.remaining) AS points FROM points_lot l
  WHERE l.member_id = :member AND l.rolling = false AND l.remaining > 0
  GROUP BY l.expires_at ORDER BY l.expires_at LIMIT 1
) f ON true
WHERE w.member_id = :member""")
    .bindparams(bindparam("now", type_=RESERVATIONS.c.expires_at.type))
    .columns(**_BALANCE_COLUMNS)
)


class _Columns(Protocol):
    """A row's columns by name: SQLAlchemy's row mapping, or the driver's record."""

    def __getitem__(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Expiring:
    amount: int
    expires_at: datetime


@dataclass(frozen=True)
class Balance:
    """What the member has: spendable total by kind, held, owed, being earned, expiring next."""

    total: int = 0
    regular: int = 0
    limited_time: int = 0
    pending: int = 0
    debt: int = 0
    earning: int = 0
    expiring_soon: Expiring | None = None


async def read_balance(conn: AsyncConnection, member_id: str, now: datetime) -> tuple[Balance, bool]:
    """The member's balance in one statement, and whether something is due (a timed-out
    reservation or an expired lot still counted) so that the caller settles and reads again."""
    row = (await conn.execute(_BALANCE_QUERY, {"member": member_id, "now": now})).first()
    return (Balance(), False) if row is None else _balance_of(row._mapping, now)


def _balance_of(row: _Columns, now: datetime) -> tuple[Balance, bool]:
    """A balance from its row's columns (SQLAlchemy's row mapping, or the driver's record)."""
    # Points by when they expire next: the rolling lots together, then the soonest fixed date.
    soonest: list[tuple[datetime, int]] = []
    rolling_at, fixed_at = row["rolling_expires_at"], row["fixed_at"]
    if row["rolling_points"] > 0 and rolling_at is not None:
        soonest.append((rolling_at, int(row["rolling_points"])))
    if fixed_at is not None:
        soonest.append((fixed_at, int(row["fixed_points"])))
    expiring = None
    if soonest:
        at = min(when for when, _ in soonest)
        expiring = Expiring(sum(n for when, n in soonest if when == at), at)
    due = bool(row["due"]) or (expiring is not None and expiring.expires_at <= now)
    available, limited = int(row["available"]), int(row["limited_time"])
    balance = Balance(
        total=available,
        regular=available - limited,
        limited_time=limited,
        pending=int(row["held"]),
        debt=int(row["debt"]),
        earning=int(row["earning"] or 0),
        expiring_soon=expiring,
    )
    return balance, due


# Balances on the driver's connection (`Database.fetch`, PostgreSQL): the same reads as
# _BALANCE_QUERY, for one member or many. SQLAlchemy's work around the statement cost more than the
# statement itself, twice the CPU of a small group's read and four times a full one's.
_BALANCE_COLUMNS_SQL = """
SELECT w.member_id, w.available, w.held, w.debt, w.limited_time, w.rolling_points, w.rolling_expires_at,
  (SELECT coalesce(sum(p.regular + p.bonus + p.merchant_bonus), 0) FROM points_pending_earn p
    WHERE p.member_id = w.member_id AND p.status = 'pending') AS earning,
  EXISTS (SELECT 1 FROM points_reservation r
    WHERE r.member_id = w.member_id AND r.status = 'open' AND r.expires_at <= $1::timestamptz) AS due,
  f.expires_at AS fixed_at, f.points AS fixed_points"""
_FIXED_LOTS_SQL = """
LEFT JOIN LATERAL (
  SELECT l.expires_at, sum(l.remaining) AS points FROM points_lot l
  WHERE l.member_id = w.member_id AND l.rolling = false AND l.remaining > 0
  GROUP BY l.expires_at ORDER BY l.expires_at LIMIT 1
) f ON true"""
# Many members ($2, an array): PostgreSQL plans it for each read (its generic plan, guessing ten
# members, looks dearer than a plan for the array it is given), a cost a group's calls share.
_BALANCES_SQL = f"""{_BALANCE_COLUMNS_SQL}
FROM unnest($2::varchar[]) AS m(member_id) JOIN points_wallet w ON w.member_id = m.member_id{_FIXED_LOTS_SQL}"""
# One member ($2, the primary key), as a lone caller's read is: planned once per connection (the
# generic plan, chosen after the first five reads), not on every call: 0.3-0.4 ms of the
# database's time less per read (bench/README.md).
_BALANCE_SQL = f"""{_BALANCE_COLUMNS_SQL}
FROM points_wallet w{_FIXED_LOTS_SQL}
WHERE w.member_id = $2::varchar"""


class BalanceReads:
    """GetBalance on PostgreSQL: the calls that arrive while one read is on its way go together in
    the next, one statement for up to 64 members (each read starts after its calls arrived, so a
    caller reads what committed before it asked). A member with something due settles and reads
    alone.

    While spans are exported, a group's read is a span of its own (`points balance read group`,
    its statement under it) in the first call's trace, linked to every call's span, and each call's
    span links back to it, as Credit's groups do: the read no longer joins the trace of whichever
    call started the queue's task."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now
        self._queue = GroupQueue(self._read, max_size=64, name="points-balance-reads")
        # One group's read at a time, each on this connection: no pool checkout and checkin per
        # read, which cost more CPU than a small group's read (bench/README.md).
        self.connection = db.held()

    @property
    def queued(self) -> int:
        return self._queue.queued

    @property
    def groups(self) -> int:
        return self._queue.groups

    async def get(self, member_id: str) -> Balance:
        balance, due, group = await self._queue.submit((member_id, otel_context.get_current()))
        if group is not None:
            trace.get_current_span().add_link(group)
        return await settle_and_read(self.db, member_id, self.now()) if due else balance

    async def _read(self, calls: list[tuple[str, Context]]) -> list[tuple[Balance, bool, trace.SpanContext | None]]:
        now = self.now()
        members = list(dict.fromkeys(member for member, _ in calls))
        with _group_span(calls) as span:
            if len(members) == 1:
                rows = await self.connection.fetch("SELECT points_wallet", _BALANCE_SQL, now, members[0])
            else:
                rows = await self.connection.fetch("SELECT points_wallet", _BALANCES_SQL, now, members)
        group = span.get_span_context() if span is not None else None
        found = {row["member_id"]: _balance_of(row, now) for row in rows}
        return [(*found.get(member, (Balance(), False)), group) for member, _ in calls]


def _group_span(calls: list[tuple[str, Context]]) -> AbstractContextManager[trace.Span | None]:
    """While spans are exported, the group's span: in the first call's trace, linked to every call."""
    if not exporting():
        return nullcontext()
    links = [trace.Link(trace.get_current_span(context).get_span_context()) for _, context in calls]
    attributes = {"kizuna.points.group_size": len(calls)}
    return tracer.start_as_current_span("points balance read group", calls[0][1], links=links, attributes=attributes)


@asynccontextmanager
async def reader(db: Database) -> AsyncIterator[AsyncConnection]:
    """A connection for one-statement reads: autocommit, so no BEGIN/ROLLBACK round trips."""
    async with db.engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


async def _once_more_if_disconnected(db: Database, read: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    try:
        async with reader(db) as conn:
            return await read(conn)
    except DBAPIError as exc:
        if not is_disconnect(exc):
            raise
    async with reader(db) as conn:  # the pool dropped its dead connections: once more
        return await read(conn)


async def get_balance(db: Database, member_id: str, now: datetime) -> Balance:
    """GetBalance: one read; only when something fell due, settle it first and read again."""
    response, due = await _once_more_if_disconnected(db, lambda conn: read_balance(conn, member_id, now))
    if not due:
        return response
    return await settle_and_read(db, member_id, now)


async def settle_and_read(db: Database, member_id: str, now: datetime) -> Balance:
    async with db.transaction() as session:
        wallet = await lock_wallet(session, member_id)
        if wallet is not None:
            await settle_due(session, wallet, now)
    async with reader(db) as conn:
        response, _ = await read_balance(conn, member_id, now)
    return response


EntryKind = Literal["credit", "spend", "refund", "clawback", "expiry", "hold", "earning"]


@dataclass(frozen=True)
class HistoryLine:
    """One line of a member's history: a posted entry, an open hold or a pending earning."""

    entry_id: str
    kind: EntryKind
    amount: int
    explanation: str
    source_service: str
    source_ref: str
    created_at: datetime
    until: datetime | None = None


@dataclass(frozen=True)
class HistoryPage:
    lines: list[HistoryLine]
    next_page_token: str


_OPEN_HOLDS = (
    core_select(
        RESERVATIONS.c.reservation_id,
        RESERVATIONS.c.amount,
        RESERVATIONS.c.reason,
        RESERVATIONS.c.source_service,
        RESERVATIONS.c.source_ref,
        RESERVATIONS.c.created_at,
        RESERVATIONS.c.expires_at,
    )
    .where(
        RESERVATIONS.c.member_id == bindparam("member"),
        RESERVATIONS.c.status == "open",
        RESERVATIONS.c.expires_at > bindparam("now", type_=RESERVATIONS.c.expires_at.type),
    )
    .order_by(RESERVATIONS.c.id.desc())
)
_PENDING_EARNINGS = (
    core_select(
        PENDING.c.source_service,
        PENDING.c.source_ref,
        PENDING.c.label,
        PENDING.c.created_at,
        (PENDING.c.regular + PENDING.c.bonus + PENDING.c.merchant_bonus).label("points"),
    )
    .where(PENDING.c.member_id == bindparam("member"), PENDING.c.status == "pending")
    .order_by(PENDING.c.created_at.desc())
)


async def open_lines(conn: AsyncConnection, member_id: str, now: datetime, speaker: Speaker) -> list[HistoryLine]:
    """The member's open holds and pending earnings, newest first."""
    lines = [
        HistoryLine(
            entry_id=row.reservation_id,
            kind="hold",
            amount=-row.amount,
            explanation=speaker.hold(row.source_service, row.source_ref, row.reason),
            source_service=row.source_service,
            source_ref=row.source_ref,
            created_at=row.created_at,
            until=row.expires_at,
        )
        for row in await conn.execute(_OPEN_HOLDS, {"member": member_id, "now": now})
    ]
    lines += [
        HistoryLine(
            entry_id=f"earning:{row.source_service}:{row.source_ref}",
            kind="earning",
            amount=int(row.points),
            explanation=speaker.earning(row.source_service, row.source_ref, row.label),
            source_service=row.source_service,
            source_ref=row.source_ref,
            created_at=row.created_at,
        )
        for row in await conn.execute(_PENDING_EARNINGS, {"member": member_id})
        if row.points > 0
    ]
    lines.sort(key=lambda line: line.created_at, reverse=True)
    return lines


async def list_entries(
    conn: AsyncConnection, member_id: str, page_size: int, page_token: str, *, now: datetime, speaker: Speaker
) -> HistoryPage:
    """A page of the member's history: on the first page (no token) the open holds and pending
    earnings first (all of them, newest first), then up to page_size posted entries, newest
    first; later pages hold posted entries only."""
    if page_size < 0:
        raise InvalidArgument("page_size must be >= 0")
    size = min(page_size or 50, MAX_PAGE)
    e = ENTRIES.c
    query = core_select(
        e.id, e.entry_id, e.kind, e.amount, e.explanation, e.source_service, e.source_ref, e.created_at
    ).where(e.member_id == member_id, e.kind.in_(VISIBLE_KINDS))
    if page_token:
        try:
            before = int(page_token)
        except ValueError:
            raise InvalidArgument("page_token is not one this server gave") from None
        query = query.where(e.id < before)
    lines = [] if page_token else await open_lines(conn, member_id, now, speaker)
    rows = (await conn.execute(query.order_by(e.id.desc()).limit(size + 1))).all()
    lines += [
        HistoryLine(
            entry_id=row.entry_id,
            kind=row.kind,
            amount=row.amount,
            explanation=speaker.entry(row.kind, row.explanation, row.source_service, row.source_ref),
            source_service=row.source_service,
            source_ref=row.source_ref,
            created_at=row.created_at,
        )
        for row in rows[:size]
    ]
    return HistoryPage(lines, str(rows[size - 1].id) if len(rows) > size else "")
