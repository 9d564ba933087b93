"""Group commit for Credit, Reserve and Capture on PostgreSQL: the calls of one operation that arrive
while one of its transactions is on its way to the database go together in the next, with
set-based statements (the way TigerBeetle batches transfers). Seven round trips carry a whole group
of credits: lock its wallets (in member order), read its idempotency records and its services'
daily budgets, then write the budgets, every entry with its postings, lot and wallet, the outbox
rows and the records, and commit. A group of captures finds and locks its reservations' wallets,
reads its records and its reservations with their holds, then writes the holds, the points
returned to lots, the reservations, the entries and wallets, the outbox rows and the records. A
group of reservations reads its members' first live lots in one statement (each reservation takes
what the ones before it left) and writes its reservations, lot takes and holds in one statement.

Each call keeps its own outcome, as if it had run alone: a first outcome is remembered under its
key (a rejection too, except those `NOT_REMEMBERED`), a retry replays it, and one call's rejection
does not touch the others. A lone call does not wait: a group is whatever queued meanwhile.

What is rare goes through `Ledger.execute` on its own, after the group committed: a wallet with
something due or a lapsed rolling expiry, an unknown or inactive member, a key used twice in one
group; for a reservation one that may need more of the member's lots than were read; for a
capture an unknown reservation, one captured twice in one group, and points returned into a lot
that expired meanwhile. So does the whole group when its transaction loses a race for a key, loses
its connection or is chosen as a deadlock's victim: nothing of it was written, and each call
retries on its own. Any other failure of a group is logged and its calls run alone too, so that a
fault of one call (a broken invariant) fails that call only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from kizuna.kit.db import is_disconnect
from kizuna.kit.errors import DomainError, InvalidArgument
from kizuna.kit.events import Outgoing, outgoing, publish_all
from kizuna.kit.groups import GroupQueue
from kizuna.points.v1 import points_pb2 as pb
from opentelemetry import trace
from opentelemetry.context import Context
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from points import ledger, spending
from points.bounds import Budgets, Limits
from points.crediting import check_credit, credited_event, lapsed, plan_credit
from points.idempotency import Ledger, check_key, insert_records_pg, record_values, replay, request_hash
from points.journal import PlannedEntry, apply_postings, new_id, post_entries_pg, ts
from points.ledger import LotState
from points.ledger_metrics import count_on_commit, group_size, points_credited, points_spent
from points.models import Wallet
from points.spending import OWNERS, RESERVATIONS_WITH_HOLDS
from points.wallets import NOT_REMEMBERED, count_lot_points, lock_wallets, records_of

tracer = trace.get_tracer("kizuna.points")
log = logging.getLogger("points.group_commit")

# At most this many calls in one transaction: a group's statements stay small, and a lone slow
# group holds few callers.
MAX_GROUP = 64


class Alone:
    """The outcome of a call the group leaves to `Ledger.execute`."""


ALONE = Alone()


@dataclass(eq=False)
class CreditCall:
    """A Credit as the RPC checked it: who calls, as which service, and the request."""

    caller: str
    service: str
    request: pb.CreditRequest
    kind: str | None
    expires_at: datetime | None
    # The RPC's trace context: its event carries it, and the group's span links to it.
    context: Context
    # The group's span (its statements are under it), which the RPC's span links to.
    group_span: trace.SpanContext | None = None


@dataclass(eq=False)
class CaptureCall:
    """A Capture as the RPC checked it."""

    caller: str
    request: pb.CaptureRequest
    context: Context
    group_span: trace.SpanContext | None = None


@dataclass(eq=False)
class ReserveCall:
    """A Reserve as the RPC checked it."""

    caller: str
    args: spending.ReserveArgs
    request: pb.ReserveRequest
    context: Context
    group_span: trace.SpanContext | None = None


C = TypeVar("C", CreditCall, CaptureCall, ReserveCall)
R = TypeVar("R", pb.CreditResponse, pb.CaptureResponse, pb.ReserveResponse)


class _Groups(Generic[C, R]):
    """Queues calls of one operation and commits them in groups, one group in flight at a time."""

    operation = ""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._queue: GroupQueue[C, R | DomainError | Alone] = GroupQueue(
            self._handle, max_size=MAX_GROUP, name=f"points-{self.operation}-groups"
        )
        self.groups = 0  # transactions committed, for the bench and the tests

    @property
    def queued(self) -> int:
        """Calls waiting for the next group."""
        return self._queue.queued

    async def submit(self, call: C) -> R | None:
        """The call's response (or its rejection, raised); None: run it on its own."""
        outcome = await self._queue.submit(call)
        if call.group_span is not None:
            trace.get_current_span().add_link(call.group_span)
        if isinstance(outcome, DomainError):
            raise outcome
        return None if isinstance(outcome, Alone) else outcome

    async def _handle(self, group: list[C]) -> list[R | DomainError | Alone]:
        try:
            outcomes = await self._commit(group)
        except Exception as exc:
            # A race lost, a connection lost or a deadlock's victim: nothing was written, each call
            # runs alone (replaying a race's winner). Anything else is a fault of one call (a broken
            # invariant), which then fails that call alone, not the calls beside it.
            if not _lost(exc):
                log.exception("a %s group failed; its %d calls run alone", self.operation, len(group))
            return [ALONE] * len(group)
        self.groups += 1
        return [outcomes.get(call, ALONE) for call in group]

    async def _commit(self, group: list[C]) -> dict[C, R | DomainError]:
        # In the first call's trace, linked to every call's (and each call's span links back to it).
        links = [trace.Link(trace.get_current_span(call.context).get_span_context()) for call in group]
        name = f"points {self.operation} group"
        with tracer.start_as_current_span(name, context=group[0].context, links=links) as span:
            span.set_attribute("kizuna.points.group_size", len(group))
            group_size.record(len(group), {"operation": self.operation})
            for call in group:
                call.group_span = span.get_span_context()
            async with self.ledger.db.transaction() as session:
                return await self._run(session, self.ledger.clock.now(), group)

    async def _run(self, session: AsyncSession, now: datetime, group: list[C]) -> dict[C, R | DomainError]:
        raise NotImplementedError


class CreditGroups(_Groups[CreditCall, pb.CreditResponse]):
    operation = "credit"

    def __init__(self, ledger: Ledger, limits: Limits, regular_expiry_months: int) -> None:
        super().__init__(ledger)
        self.limits = limits
        self.months = regular_expiry_months

    async def _run(
        self, session: AsyncSession, now: datetime, group: list[CreditCall]
    ) -> dict[CreditCall, pb.CreditResponse | DomainError]:
        return await _CreditTxn(self, session, now).run(group)


class CaptureGroups(_Groups[CaptureCall, pb.CaptureResponse]):
    operation = "capture"

    async def _run(
        self, session: AsyncSession, now: datetime, group: list[CaptureCall]
    ) -> dict[CaptureCall, pb.CaptureResponse | DomainError]:
        return await _CaptureTxn(session, now).run(group)


def _lost(exc: Exception) -> bool:
    """Whether a group's transaction lost a race for a key, its connection, or a deadlock, through
    SQLAlchemy or on the driver's connection (`OnDriver` raises the driver's own errors)."""
    if isinstance(exc, IntegrityError) or is_disconnect(exc):
        return True
    driver = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(driver, "sqlstate", None) in ("23505", "40P01") or "deadlock detected" in str(driver)


class ReserveGroups(_Groups[ReserveCall, pb.ReserveResponse]):
    operation = "reserve"

    def __init__(self, ledger: Ledger, default_ttl: int, max_ttl: int) -> None:
        super().__init__(ledger)
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl

    async def _run(
        self, session: AsyncSession, now: datetime, group: list[ReserveCall]
    ) -> dict[ReserveCall, pb.ReserveResponse | DomainError]:
        return await _ReserveTxn(self, session, now).run(group)


class _Txn(Generic[C, R]):
    """One group's transaction: its calls' outcomes, and what it writes besides its operation's own
    rows (entries and wallets, outbox rows, idempotency records)."""

    operation: str
    response_type: type[R]

    def __init__(self, session: AsyncSession, now: datetime) -> None:
        self.session = session
        self.now = now
        self.outcomes: dict[C, R | DomainError] = {}
        self.entries: list[PlannedEntry] = []
        self.events: list[Outgoing] = []
        self.records: list[dict[str, Any]] = []
        self.wallets: dict[str, Wallet] = {}
        self._found: dict[tuple[str, str], Any] = {}
        self._seen: set[tuple[str, str]] = set()

    async def read_records(self, group: list[C]) -> None:
        """The idempotency records of the group's (caller, key) pairs, one read."""
        pairs = list(dict.fromkeys((call.caller, call.request.idempotency_key) for call in group))
        self._found = await records_of(self.session, pairs)

    def admit(self, call: C) -> str | None:
        """The request's hash when the group is to handle the call now; None when the call has its
        outcome already (an invalid key, a replay of its record) or runs alone (its key came earlier
        in the group: after the group it replays the first call's outcome)."""
        key = call.request.idempotency_key
        invalid = check_key(key)
        if invalid is not None:
            self.outcomes[call] = invalid
            return None
        if (call.caller, key) in self._seen:
            return None
        self._seen.add((call.caller, key))
        digest = request_hash(self.operation, call.request)
        record = self._found.get((call.caller, key))
        if record is not None:
            self.outcomes[call] = replay(record, self.operation, digest, key, self.response_type)
            return None
        return digest

    def settle(self, call: C, digest: str, outcome: R | DomainError, *, remember: bool = True) -> None:
        """The call's first outcome, remembered under its key unless told not to."""
        self.outcomes[call] = outcome
        if remember:
            key = call.request.idempotency_key
            self.records.append(record_values(call.caller, key, self.operation, digest, self.now, outcome))

    def entry(self, wallet: Wallet, postings: dict[str, int], *, kind: str, explanation: str, **fields: Any) -> str:
        """Apply an entry's postings to the wallet (in memory) and plan it; its id."""
        postings, member_change = apply_postings(wallet, kind, postings)
        entry_id = new_id("ent")
        self.entries.append(
            PlannedEntry(
                entry_id=entry_id,
                member_id=wallet.member_id,
                kind=kind,
                amount=member_change,
                explanation=explanation,
                created_at=self.now,
                postings=postings,
                **fields,
            )
        )
        self.wallets[wallet.member_id] = wallet
        return entry_id

    async def write(self) -> None:
        """The entries and wallets, the outbox rows and the records."""
        await post_entries_pg(self.session, self.entries, list(self.wallets.values()))
        await publish_all(self.session, self.events)
        if self.records:
            await insert_records_pg(self.session, self.records)


class _CreditTxn(_Txn[CreditCall, pb.CreditResponse]):
    """A group of credits."""

    operation, response_type = "credit", pb.CreditResponse

    def __init__(self, groups: CreditGroups, session: AsyncSession, now: datetime) -> None:
        super().__init__(session, now)
        self.groups = groups
        self.budgets = Budgets(groups.limits, now)

    async def run(self, group: list[CreditCall]) -> dict[CreditCall, pb.CreditResponse | DomainError]:
        session, now = self.session, self.now
        locked = await lock_wallets(session, [call.request.member_id for call in group], now)
        await self.read_records(group)
        await self.budgets.load(session, {call.service for call in group})
        for call in group:
            digest = self.admit(call)
            if digest is None:
                continue
            wallet, due = locked.get(call.request.member_id, (None, False))
            if wallet is None or due or wallet.status != "active" or lapsed(wallet, now):
                continue  # alone: settling, freezing and refusing are the single path's
            try:
                self.settle(call, digest, self._credit(call, wallet))
            except NOT_REMEMBERED as exc:
                self.settle(call, digest, exc, remember=False)
            except DomainError as exc:
                self.settle(call, digest, exc)
        await self.budgets.write(session)
        await self.write()
        return self.outcomes

    def _credit(self, call: CreditCall, wallet: Wallet) -> pb.CreditResponse:
        """The credit's effect in memory, as `crediting.credit` has it; written with the group."""
        request, now = call.request, self.now
        if call.kind is None:
            raise InvalidArgument("kind must be CREDIT_KIND_REGULAR or CREDIT_KIND_LIMITED_TIME")
        check_credit(request.amount, call.kind, call.expires_at, now, self.groups.limits)
        self.budgets.charge(call.service, wallet.member_id, request.amount)
        plan = plan_credit(
            wallet,
            now,
            amount=request.amount,
            kind=call.kind,
            reason=request.reason,
            source_service=call.service,
            expires_at=call.expires_at,
            regular_expiry_months=self.groups.months,
        )
        entry_id = self.entry(
            wallet,
            plan.postings,
            kind="credit",
            explanation=plan.explanation,
            source_service=call.service,
            source_ref=request.source_ref,
            lot=plan.lot,
        )
        event = credited_event(
            entry_id,
            wallet,
            now,
            plan,
            reason=request.reason,
            source_service=call.service,
            source_ref=request.source_ref,
            key=request.idempotency_key,
        )
        self.events.append(outgoing("points.ledger.credited", event, member_id=wallet.member_id, context=call.context))
        count_on_commit(self.session, points_credited, request.amount, call.service)
        return pb.CreditResponse(entry_id=entry_id, balance_after=wallet.available)


class _CaptureTxn(_Txn[CaptureCall, pb.CaptureResponse]):
    """A group of captures."""

    operation, response_type = "capture", pb.CaptureResponse

    async def run(self, group: list[CaptureCall]) -> dict[CaptureCall, pb.CaptureResponse | DomainError]:
        session, now = self.session, self.now
        conn = await session.connection()
        reservations = list(dict.fromkeys(call.request.reservation_id for call in group))
        owners = {
            row.reservation_id: row.member_id for row in await conn.execute(OWNERS, {"reservations": reservations})
        }
        locked = await lock_wallets(session, list(owners.values()), now)
        await self.read_records(group)
        rows: dict[str, list[Any]] = {}
        for row in await conn.execute(RESERVATIONS_WITH_HOLDS, {"reservations": list(owners)}):
            rows.setdefault(row.reservation_id, []).append(row)
        captured: set[str] = set()
        holds: list[tuple[int, int, int]] = []
        back: dict[int, int] = {}
        marks: list[tuple[int, int, str]] = []
        for call in group:
            key, reservation_id = call.request.idempotency_key, call.request.reservation_id
            digest = self.admit(call)
            if digest is None:
                continue
            wallet, due = locked.get(owners.get(reservation_id, ""), (None, False))
            if wallet is None or due or wallet.status != "active" or reservation_id in captured:
                continue  # alone: unknown reservations, settling first, a second capture of one
            request = spending.CaptureArgs(reservation_id, call.request.amount, key)
            try:
                plan = spending.plan_capture(rows[reservation_id], wallet, now, caller=call.caller, request=request)
            except DomainError as exc:
                self.settle(call, digest, exc)
                continue
            if plan.into_expired:
                continue  # alone: the returned points' lot is expired after it
            captured.add(reservation_id)
            reservation = plan.reservation
            spending.count_returns(wallet, plan)
            entry_id = self.entry(
                wallet,
                plan.postings,
                kind="spend",
                explanation=plan.explanation,
                source_service=reservation.source_service,
                source_ref=reservation.source_ref,
                lot=None,
            )
            holds.extend((reservation.id, lot_id, points) for lot_id, points in plan.holds)
            for lot_id, points in plan.back:
                if points > 0:
                    back[lot_id] = back.get(lot_id, 0) + points
            marks.append((reservation.id, plan.amount, entry_id))
            event = spending.captured_event(entry_id, wallet, now, plan, key=key)
            self.events.append(
                outgoing("points.ledger.captured", event, member_id=wallet.member_id, context=call.context)
            )
            count_on_commit(session, points_spent, plan.amount, reservation.source_service)
            response = pb.CaptureResponse(
                captured=plan.amount, returned=plan.returned, entry_id=entry_id, balance_after=wallet.available
            )
            self.settle(call, digest, response)
        if marks:
            params = {
                "h_reservations": [h[0] for h in holds],
                "h_lots": [h[1] for h in holds],
                "h_points": [h[2] for h in holds],
                "b_lots": list(back),
                "b_points": list(back.values()),
                "m_reservations": [m[0] for m in marks],
                "m_points": [m[1] for m in marks],
                "m_entries": [m[2] for m in marks],
            }
            if (await conn.execute(spending.CAPTURE_MANY_PG, params)).scalar_one() != len(marks):
                raise AssertionError("a captured reservation was not marked")
        await self.write()
        return self.outcomes


class _ReserveTxn(_Txn[ReserveCall, pb.ReserveResponse]):
    """A group of reservations: the members' first live lots read in one statement, each reservation
    taking from what the ones before it left."""

    operation, response_type = "reserve", pb.ReserveResponse

    def __init__(self, groups: ReserveGroups, session: AsyncSession, now: datetime) -> None:
        super().__init__(session, now)
        self.groups = groups

    async def run(self, group: list[ReserveCall]) -> dict[ReserveCall, pb.ReserveResponse | DomainError]:
        session, now = self.session, self.now
        locked = await lock_wallets(session, [call.args.member_id for call in group], now)
        await self.read_records(group)
        # Every member's first live lots in one statement, read once for the group.
        wallets = [wallet for wallet, due in locked.values() if not due and wallet.status == "active"]
        lots = {
            member: (rows, {row.id: row.remaining for row in rows})
            for member, rows in (await spending.first_live_lots_of(session, wallets, now) if wallets else {}).items()
        }
        reservations: list[dict[str, Any]] = []
        holds: list[tuple[str, int, int, int]] = []
        taken: dict[int, int] = {}
        for call in group:
            args = call.args
            digest = self.admit(call)
            if digest is None:
                continue
            wallet, due = locked.get(args.member_id, (None, False))
            if wallet is None or due or wallet.status != "active":
                continue  # alone: settling and refusing are the single path's
            try:
                spending.check_reserve(args, self.groups.max_ttl)
                rows, remaining = lots[args.member_id]
                if len(rows) == spending.FIRST_LOTS and sum(remaining.values()) < args.amount:
                    continue  # alone: it may need more of the member's lots than were read
                live = [LotState(row.id, row.kind, remaining[row.id], row.expires_at) for row in rows]
                takes = ledger.allocate([lot for lot in live if lot.remaining > 0], args.amount, now)
            except DomainError as exc:
                self.settle(call, digest, exc)
                continue
            kinds = {row.id: (row.kind, row.rolling) for row in rows}
            reservation_id = new_id("rsv")
            for seq, (lot_id, take) in enumerate(takes):
                remaining[lot_id] -= take
                taken[lot_id] = taken.get(lot_id, 0) + take
                count_lot_points(wallet, *kinds[lot_id], -take)
                holds.append((reservation_id, lot_id, seq, take))
            expires_at = now + timedelta(seconds=args.ttl_seconds or self.groups.default_ttl)
            source_service = args.source_service or call.caller
            reservations.append(
                {
                    "reservation_id": reservation_id,
                    "member_id": wallet.member_id,
                    "caller": call.caller,
                    "amount": args.amount,
                    "reason": args.reason,
                    "source_service": source_service,
                    "source_ref": args.source_ref,
                    "expires_at": expires_at,
                }
            )
            self.entry(
                wallet,
                spending.hold_postings(wallet, args.amount),
                kind="hold",
                explanation=f"Hold: {args.reason}",
                source_service=source_service,
                source_ref=args.source_ref,
                lot=None,
            )
            event = spending.reserved_event(
                reservation_id, wallet, now, expires_at, source_service=source_service, request=args
            )
            self.events.append(
                outgoing("points.ledger.reserved", event, member_id=wallet.member_id, context=call.context)
            )
            response = pb.ReserveResponse(
                reservation_id=reservation_id, expires_at=ts(expires_at), balance_after=wallet.available
            )
            self.settle(call, digest, response)
        if reservations:
            conn = await session.connection()
            params = {
                "created_at": now,
                **{f"r_{name}": [r[column] for r in reservations] for name, column in _RESERVATION_ARRAYS.items()},
                "t_lots": list(taken),
                "t_points": list(taken.values()),
                "h_reservations": [h[0] for h in holds],
                "h_lots": [h[1] for h in holds],
                "h_seq": [h[2] for h in holds],
                "h_points": [h[3] for h in holds],
            }
            if (await conn.execute(spending.RESERVE_MANY_PG, params)).scalar_one() != len(reservations):
                raise AssertionError("a reservation was not written")
        await self.write()
        return self.outcomes


_RESERVATION_ARRAYS = {
    "ids": "reservation_id",
    "members": "member_id",
    "callers": "caller",
    "amounts": "amount",
    "reasons": "reason",
    "services": "source_service",
    "refs": "source_ref",
    "expires": "expires_at",
}
