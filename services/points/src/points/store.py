"""The ledger in SQL: every movement locks the member's wallet row first (`SELECT ... FOR UPDATE`
on PostgreSQL; SQLite serializes writers with BEGIN IMMEDIATE), settles what is due (timed-out
reservations, expired lots), then writes one balanced entry, updates the balance rows and lots,
and stages its `points.ledger.*` event in the same transaction.

Idempotency: `Ledger.execute` records the first outcome of each (caller, key), success or
rejection, in the same transaction as the effect; the effect runs in a savepoint so a rejection
leaves nothing but its record behind.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.kit import errors
from kizuna.kit.db import Database
from kizuna.kit.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from kizuna.kit.events import publish
from kizuna.points.v1 import events_pb2 as ev
from kizuna.points.v1 import points_pb2 as pb
from sqlalchemy import and_, bindparam, exists, func, insert, or_, update
from sqlalchemy import select as core_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from points import ledger
from points.explain import Speaker
from points.ledger import LIMITED_TIME, REGULAR, HoldState, LotState
from points.ledger_metrics import budget_refused, count_on_commit, points_credited, points_spent
from points.models import (
    ACCOUNT_EXPIRED,
    DailyCredit,
    Entry,
    Hold,
    IdempotencyRecord,
    Lot,
    PendingEarn,
    Posting,
    Reservation,
    ServiceUse,
    Wallet,
    account_available,
    account_debt,
    account_held,
    account_issued,
    account_redeemed,
)

VISIBLE_KINDS = ("credit", "spend", "refund", "clawback", "expiry")
ENTRY_KIND = {
    "credit": pb.ENTRY_KIND_CREDIT,
    "spend": pb.ENTRY_KIND_SPEND,
    "refund": pb.ENTRY_KIND_REFUND,
    "clawback": pb.ENTRY_KIND_CLAWBACK,
    "expiry": pb.ENTRY_KIND_EXPIRY,
}
LOT_KIND = {REGULAR: pb.CREDIT_KIND_REGULAR, LIMITED_TIME: pb.CREDIT_KIND_LIMITED_TIME}
MAX_PAGE = 200

R = TypeVar("R", bound=Message)


def ts(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


# ---- wallets ---------------------------------------------------------------------------------


async def lock_wallet(session: AsyncSession, member_id: str, *, skip_locked: bool = False) -> Wallet | None:
    """The member's wallet row, locked for this transaction (None if unknown, or busy with skip_locked)."""
    query = select(Wallet).where(Wallet.member_id == member_id)
    query = query.with_for_update(skip_locked=skip_locked).execution_options(populate_existing=True)
    return (await session.exec(query)).first()


LOTS = Lot.__table__
ENTRIES = Entry.__table__
POSTINGS = Posting.__table__
RESERVATIONS = Reservation.__table__
HOLDS = Hold.__table__
RECORDS = IdempotencyRecord.__table__
WALLETS = Wallet.__table__
PENDING = PendingEarn.__table__


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


def _lock_query(by_reservation: bool) -> Any:
    """Lock the member's wallet, learn whether anything is due, and fetch the idempotency record of
    (caller, key): one statement, built once (bind parameters: member, caller, key, now)."""
    now = bindparam("now", type_=LOTS.c.expires_at.type)
    due_reservation = exists().where(
        RESERVATIONS.c.member_id == Wallet.member_id,
        RESERVATIONS.c.status == "open",
        RESERVATIONS.c.expires_at <= now,
    )
    due_lot = exists().where(LOTS.c.member_id == Wallet.member_id, LOTS.c.remaining > 0, LOTS.c.expires_at <= now)
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
    return (
        select(Wallet, due_reservation.label("due_r"), due_lot.label("due_l"), *_RECORD_COLUMNS)  # type: ignore[call-overload]
        .select_from(Wallet)
        .outerjoin(RECORDS, and_(RECORDS.c.caller == bindparam("caller"), RECORDS.c.key == bindparam("key")))
        .where(Wallet.member_id == owner)
        .with_for_update(of=Wallet)
        .execution_options(populate_existing=True)
    )


_LOCK_BY_MEMBER = _lock_query(False)
_LOCK_BY_RESERVATION = _lock_query(True)
_RECORD_QUERY = core_select(*_RECORD_COLUMNS).where(
    RECORDS.c.caller == bindparam("caller"), RECORDS.c.key == bindparam("key")
)


# Statements of the hot paths, built once: SQLAlchemy then skips building and cache-keying them.
_INSERT_ENTRY = insert(ENTRIES).returning(ENTRIES.c.id)
_INSERT_POSTING = insert(POSTINGS)
_INSERT_LOT = insert(LOTS)
_INSERT_RECORD = insert(RECORDS)
_INSERT_HOLD = insert(HOLDS)
_INSERT_RESERVATION = insert(RESERVATIONS).returning(RESERVATIONS.c.id)
_MOVE_ROLLING_EXPIRY = (
    update(LOTS)
    .where(
        LOTS.c.member_id == bindparam("member"),
        LOTS.c.rolling.is_(True),
        LOTS.c.expires_at > bindparam("now", type_=LOTS.c.expires_at.type),
    )
    .values(expires_at=bindparam("until", type_=LOTS.c.expires_at.type))
)
_LIVE_LOTS = core_select(LOTS.c.id, LOTS.c.kind, LOTS.c.remaining, LOTS.c.expires_at).where(
    LOTS.c.member_id == bindparam("member"),
    LOTS.c.remaining > 0,
    LOTS.c.expires_at > bindparam("now", type_=LOTS.c.expires_at.type),
)
_TAKE_FROM_LOT = (
    update(LOTS).where(LOTS.c.id == bindparam("lot")).values(remaining=LOTS.c.remaining - bindparam("points"))
)
_RETURN_TO_LOT = (
    update(LOTS).where(LOTS.c.id == bindparam("lot")).values(remaining=LOTS.c.remaining + bindparam("points"))
)
_RESERVATION = core_select(RESERVATIONS).where(RESERVATIONS.c.reservation_id == bindparam("reservation"))
_RESERVATION_HOLDS = (
    core_select(HOLDS.c.lot_id, HOLDS.c.amount, LOTS.c.expires_at)
    .join(LOTS, LOTS.c.id == HOLDS.c.lot_id)
    .where(HOLDS.c.reservation_pk == bindparam("reservation"))
    .order_by(HOLDS.c.seq)
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


async def lock_for_operation(session: AsyncSession, member: Member, caller: str, key: str, now: datetime) -> Locked:
    """One round trip: lock the member's wallet, learn whether anything is due (timed-out
    reservations, expired lots), and fetch the idempotency record of (caller, key)."""
    query = _LOCK_BY_RESERVATION if member.reservation_id else _LOCK_BY_MEMBER
    params = {"member": member.reservation_id or member.member_id, "caller": caller, "key": key, "now": now}
    row = (await session.exec(query, params=params)).first()
    if row is None:
        conn = await session.connection()
        record = (await conn.execute(_RECORD_QUERY, {"caller": caller, "key": key})).first()
        return Locked(None, False, record)
    return Locked(row[0], bool(row[1] or row[2]), row if row.operation is not None else None)


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


async def post_entry(
    session: AsyncSession,
    wallet: Wallet,
    *,
    kind: str,
    postings: dict[str, int],
    explanation: str,
    source_service: str,
    source_ref: str,
    now: datetime,
) -> Posted:
    """Write one balanced entry and apply its postings to the member's balance rows."""
    postings = {account: amount for account, amount in postings.items() if amount != 0}
    if sum(postings.values()) != 0:
        raise AssertionError(f"unbalanced entry {kind}: {postings}")
    member = wallet.member_id
    wallet.available += postings.get(account_available(member), 0)
    wallet.held += postings.get(account_held(member), 0)
    wallet.debt -= postings.get(account_debt(member), 0)
    if min(wallet.available, wallet.held, wallet.debt) < 0:
        raise AssertionError(f"entry {kind} would make a balance negative: {postings}")
    member_change = sum(v for a, v in postings.items() if a.startswith(f"member:{member}:"))
    entry_id = new_id("ent")
    conn = await session.connection()
    pk = (
        await conn.execute(
            _INSERT_ENTRY,
            {
                "entry_id": entry_id,
                "member_id": member,
                "kind": kind,
                "amount": member_change,
                "explanation": explanation,
                "source_service": source_service,
                "source_ref": source_ref,
                "created_at": now,
            },
        )
    ).scalar_one()
    await conn.execute(_INSERT_POSTING, [{"entry_pk": pk, "account": a, "amount": v} for a, v in postings.items()])
    session.add(wallet)
    return Posted(pk, entry_id)


class Posted(NamedTuple):
    id: int
    entry_id: str


async def member_lots(session: AsyncSession, member_id: str, *, with_empty: bool = False) -> list[Lot]:
    query = select(Lot).where(Lot.member_id == member_id)
    if not with_empty:
        query = query.where(col(Lot.remaining) > 0)
    return list((await session.exec(query.execution_options(populate_existing=True))).all())


def lot_state(lot: Lot) -> LotState:
    assert lot.id is not None
    return LotState(lot.id, lot.kind, lot.remaining, lot.expires_at)


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


async def expire_due_lots(session: AsyncSession, wallet: Wallet, now: datetime) -> int:
    lots = (
        await session.exec(
            select(Lot)
            .where(Lot.member_id == wallet.member_id, col(Lot.remaining) > 0, col(Lot.expires_at) <= now)
            .order_by(col(Lot.id))
            .execution_options(populate_existing=True)
        )
    ).all()
    for lot in lots:
        amount, lot.remaining = lot.remaining, 0
        lot.expired += amount
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
        publish(
            session,
            "points.ledger.expired",
            ev.Expired(
                entry_id=entry.entry_id,
                member_id=wallet.member_id,
                amount=amount,
                kind=LOT_KIND[lot.kind],
                balance_after=wallet.available,
                expired_at=ts(lot.expires_at),
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
    lots = {lot.id: lot for lot in await member_lots(session, wallet.member_id, with_empty=True)}
    back, repaid = ledger.repay_debt_first(
        [(hold.lot_id, hold.amount, lots[hold.lot_id].expires_at) for hold in holds], wallet.debt, now
    )
    for lot_id, points in back:
        lots[lot_id].remaining += points
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
    publish(
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


# ---- idempotent execution ----------------------------------------------------------------------


def request_hash(operation: str, request: Message) -> str:
    copy = type(request)()
    copy.CopyFrom(request)
    if "idempotency_key" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("idempotency_key")
    return hashlib.sha256(operation.encode() + b"\0" + copy.SerializeToString(deterministic=True)).hexdigest()


_ERRORS: dict[str, type[DomainError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.PermissionDenied,
        errors.Unauthenticated,
    )
}

Effect = Callable[[AsyncSession, Wallet | None, datetime], Awaitable[R]]


def _replay(record: Any, operation: str, digest: str, key: str, response_type: type[R]) -> R | DomainError:
    if record.operation != operation or record.request_hash != digest:
        return AlreadyExists(f"idempotency key {key!r} was already used with a different request")
    if record.error_code is not None:
        return _ERRORS.get(record.error_code, DomainError)(record.error_message or "")
    response = response_type()
    response.ParseFromString(record.response or b"")
    return response


def _check_key(key: str) -> DomainError | None:
    if not key:
        return InvalidArgument("idempotency_key is required")
    if len(key) > 200:
        return InvalidArgument("idempotency_key is longer than 200 characters")
    return None


async def _remember(
    session: AsyncSession,
    caller: str,
    key: str,
    operation: str,
    digest: str,
    now: datetime,
    outcome: Message | DomainError,
) -> None:
    values: dict[str, Any] = {
        "caller": caller,
        "key": key,
        "operation": operation,
        "request_hash": digest,
        "created_at": now,
    }
    if isinstance(outcome, DomainError):
        values.update(error_code=outcome.code, error_message=outcome.message)
    else:
        values.update(response=outcome.SerializeToString(deterministic=True))
    await session.flush()  # the effect's ORM changes go first, so a key race fails before commit
    conn = await session.connection()
    await conn.execute(_INSERT_RECORD, values)


async def apply_idempotent(
    session: AsyncSession,
    *,
    caller: str,
    key: str,
    operation: str,
    request: Message,
    member_id: str | None = None,
    member: Member | None = None,
    effect: Effect[R],
    response_type: type[R],
    now: datetime,
    savepoint: bool = True,
) -> R | DomainError:
    """Inside one transaction: lock the member, settle what is due, then replay the key's first
    outcome or apply `effect` and remember its outcome.

    With `savepoint` (inside a consumer's inbox transaction) a rejection is rolled back to a
    savepoint and remembered here; without it the rejection is raised, the caller rolls the whole
    transaction back and remembers it with `remember_rejection` (one round trip less per call).
    """
    invalid = _check_key(key)
    if invalid is not None:
        return invalid
    digest = request_hash(operation, request)
    locked = await lock_for_operation(session, member or Member(member_id or ""), caller, key, now)
    if locked.record is not None:
        return _replay(locked.record, operation, digest, key, response_type)
    wallet = locked.wallet
    if wallet is not None and wallet.status == "active" and locked.due:
        await settle_due(session, wallet, now)
    outcome: R | DomainError
    if savepoint:
        try:
            async with session.begin_nested():
                outcome = await effect(session, wallet, now)
        except DomainError as exc:
            outcome = exc
    else:
        outcome = await effect(session, wallet, now)
    if isinstance(outcome, NOT_REMEMBERED):
        return outcome
    await _remember(session, caller, key, operation, digest, now, outcome)
    return outcome


async def remember_rejection(
    session: AsyncSession,
    *,
    caller: str,
    key: str,
    operation: str,
    request: Message,
    member: Member,
    response_type: type[R],
    rejection: DomainError,
    now: datetime,
) -> R | DomainError:
    """Record that the first attempt with (caller, key) was rejected (unless another attempt
    recorded its outcome meanwhile: then that one is the answer)."""
    digest = request_hash(operation, request)
    locked = await lock_for_operation(session, member, caller, key, now)
    if locked.record is not None:
        return _replay(locked.record, operation, digest, key, response_type)
    await _remember(session, caller, key, operation, digest, now, rejection)
    return rejection


class Ledger:
    """Runs ledger operations in their own transactions, idempotently, with retries on key races."""

    def __init__(self, db: Database, settings: Any, clock: Any) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock

    async def execute(
        self,
        *,
        caller: str,
        key: str,
        operation: str,
        request: Message,
        member: Member,
        effect: Effect[R],
        response_type: type[R],
    ) -> R:
        outcome: R | DomainError
        for attempt in range(5):
            try:
                try:
                    async with self.db.transaction() as session:
                        outcome = await apply_idempotent(
                            session,
                            caller=caller,
                            key=key,
                            operation=operation,
                            request=request,
                            member=member,
                            effect=effect,
                            response_type=response_type,
                            now=self.clock.now(),
                            savepoint=False,
                        )
                except NOT_REMEMBERED:
                    raise  # nothing written, nothing remembered: the same key may succeed later
                except DomainError as rejection:
                    # Everything the attempt wrote is rolled back; remember the rejection itself.
                    async with self.db.transaction() as session:
                        outcome = await remember_rejection(
                            session,
                            caller=caller,
                            key=key,
                            operation=operation,
                            request=request,
                            member=member,
                            response_type=response_type,
                            rejection=rejection,
                            now=self.clock.now(),
                        )
                break
            except IntegrityError:
                # Another call with the same key committed first; the next attempt replays it.
                if attempt == 4:
                    raise
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    async def member_of_credit(self, entry_id: str, source_service: str, source_ref: str) -> str | None:
        async with self.db.sessions() as session:
            query = select(Entry.member_id).where(Entry.kind == "credit")
            if entry_id:
                query = query.where(Entry.entry_id == entry_id)
            else:
                query = query.where(Entry.source_service == source_service, Entry.source_ref == source_ref)
            return (await session.exec(query.limit(1))).first()


# ---- bounds -------------------------------------------------------------------------------------


class Limits(NamedTuple):
    """The most one credit may give, and each service's points per UTC day."""

    max_credit_points: int
    max_purchase_minor: int
    daily_budget: Callable[[str], int]

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(settings.max_credit_points, settings.max_purchase_minor, settings.daily_budget)


def check_money(amount_minor: int, currency: str, limits: Limits, what: str, *, allow_zero: bool = False) -> None:
    if amount_minor < 0 or (amount_minor == 0 and not allow_zero):
        raise InvalidArgument(f"{what}.amount_minor must be {'>= 0' if allow_zero else '> 0'}")
    if amount_minor > limits.max_purchase_minor:
        raise InvalidArgument(
            f"{what}.amount_minor {amount_minor} is above the most one purchase may be ({limits.max_purchase_minor})"
        )
    if currency and not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
        raise InvalidArgument(f"{what}.currency must be an ISO 4217 code such as JPY")


BUDGET_SHARDS = 8
DAILY = DailyCredit.__table__


def check_points(amount: int, limits: Limits, what: str = "amount") -> None:
    if amount <= 0:
        raise InvalidArgument(f"{what} must be > 0")
    if amount > limits.max_credit_points:
        raise InvalidArgument(f"{what} {amount} is above the most one credit may give ({limits.max_credit_points})")


async def charge_budget(
    session: AsyncSession, service: str, member_id: str, amount: int, now: datetime, limits: Limits
) -> None:
    """Count `amount` against `service`'s credits today, or refuse it (OverBudget) if that would
    exceed the budget. The count is spread over BUDGET_SHARDS rows by member, so concurrent credits
    of one service rarely wait on each other; two in flight at once may together pass the budget
    by at most one credit each."""
    day = now.date().isoformat()
    budget = limits.daily_budget(service)
    conn = await session.connection()
    used = (
        await conn.execute(
            core_select(func.coalesce(func.sum(DAILY.c.points), 0)).where(
                DAILY.c.service == service, DAILY.c.day == day
            )
        )
    ).scalar_one()
    if used + amount > budget:
        budget_refused.add(1, {"service": service})
        raise OverBudget(f"{service} has credited {used} of its {budget} points today; {amount} more is refused")
    shard = zlib.crc32(member_id.encode()) % BUDGET_SHARDS
    upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = upsert(DAILY).values(service=service, day=day, shard=shard, points=amount)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["service", "day", "shard"], set_={"points": DAILY.c.points + statement.excluded.points}
        )
    )


# ---- the operations ----------------------------------------------------------------------------


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
) -> pb.CreditResponse:
    check_points(amount, limits)
    if kind == LIMITED_TIME and (expires_at is None or expires_at <= now):
        raise InvalidArgument("limited-time points need an expires_at in the future")
    if expires_at is not None and expires_at <= now:
        raise InvalidArgument("expires_at must be in the future")
    wallet = require_active(wallet, member_id)
    rolling_until = ledger.add_months(now, regular_expiry_months)
    if session.new or session.dirty:
        await session.flush()  # what settling changed through the ORM, before SQL of our own
    await charge_budget(session, source_service, member_id, amount, now, limits)
    conn = await session.connection()
    # Earning moves the rolling expiry of every regular lot not yet expired.
    await conn.execute(_MOVE_ROLLING_EXPIRY, {"member": member_id, "now": now, "until": rolling_until})
    repaid, to_lot = ledger.plan_credit(amount, wallet.debt)
    entry = await post_entry(
        session,
        wallet,
        kind="credit",
        postings={
            account_issued(source_service): -amount,
            account_available(member_id): to_lot,
            account_debt(member_id): repaid,
        },
        explanation=reason + (f" ({repaid} repaid debt)" if repaid else ""),
        source_service=source_service,
        source_ref=source_ref,
        now=now,
    )
    lot_expires = expires_at or rolling_until
    await conn.execute(
        _INSERT_LOT,
        {
            "member_id": member_id,
            "entry_pk": entry.id,
            "kind": kind,
            "rolling": expires_at is None,
            "amount": amount,
            "remaining": to_lot,
            "clawed_back": 0,
            "expired": 0,
            "source_service": source_service,
            "expires_at": lot_expires,
            "created_at": now,
        },
    )
    wallet.last_earned_at = now
    publish(
        session,
        "points.ledger.credited",
        ev.Credited(
            entry_id=entry.entry_id,
            member_id=member_id,
            amount=amount,
            kind=LOT_KIND[kind],
            reason=reason,
            source_service=source_service,
            source_ref=source_ref,
            expires_at=ts(lot_expires),
            balance_after=wallet.available,
            idempotency_key=key,
            credited_at=ts(now),
        ),
        member_id=member_id,
    )
    count_on_commit(session, points_credited, amount, source_service)
    return pb.CreditResponse(entry_id=entry.entry_id, balance_after=wallet.available)


async def reserve(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    caller: str,
    request: pb.ReserveRequest,
    default_ttl: int,
    max_ttl: int,
) -> pb.ReserveResponse:
    if request.amount <= 0:
        raise InvalidArgument("amount must be > 0")
    if request.ttl_seconds < 0 or request.ttl_seconds > max_ttl:
        raise InvalidArgument(f"ttl_seconds must be between 0 and {max_ttl}")
    wallet = require_active(wallet, request.member_id)
    if session.new or session.dirty:
        await session.flush()
    conn = await session.connection()
    lots = [
        LotState(row.id, row.kind, row.remaining, row.expires_at)
        for row in await conn.execute(_LIVE_LOTS, {"member": wallet.member_id, "now": now})
    ]
    takes = ledger.allocate(lots, request.amount, now)
    expires_at = now + timedelta(seconds=request.ttl_seconds or default_ttl)
    reservation_id = new_id("rsv")
    source_service = request.source_service or caller
    reservation_pk = (
        await conn.execute(
            _INSERT_RESERVATION,
            {
                "reservation_id": reservation_id,
                "member_id": wallet.member_id,
                "caller": caller,
                "amount": request.amount,
                "status": "open",
                "reason": request.reason,
                "source_service": source_service,
                "source_ref": request.source_ref,
                "captured": 0,
                "refunded": 0,
                "created_at": now,
                "expires_at": expires_at,
            },
        )
    ).scalar_one()
    await conn.execute(_TAKE_FROM_LOT, [{"lot": lot_id, "points": take} for lot_id, take in takes])
    await conn.execute(
        _INSERT_HOLD,
        [
            {
                "reservation_pk": reservation_pk,
                "lot_id": lot_id,
                "seq": seq,
                "amount": take,
                "captured": 0,
                "refunded": 0,
            }
            for seq, (lot_id, take) in enumerate(takes)
        ],
    )
    await post_entry(
        session,
        wallet,
        kind="hold",
        postings={account_available(wallet.member_id): -request.amount, account_held(wallet.member_id): request.amount},
        explanation=f"Hold: {request.reason}",
        source_service=source_service,
        source_ref=request.source_ref,
        now=now,
    )
    publish(
        session,
        "points.ledger.reserved",
        ev.Reserved(
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
        ),
        member_id=wallet.member_id,
    )
    return pb.ReserveResponse(reservation_id=reservation_id, expires_at=ts(expires_at), balance_after=wallet.available)


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


async def capture(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    caller: str,
    request: pb.CaptureRequest,
    event_reservation_id: bool = True,
) -> pb.CaptureResponse:
    """Spend (part of) a reservation; the rest returns to its lots. `event_reservation_id=False`
    leaves the Captured event's reservation_id empty (spends by command have no reservation)."""
    if request.amount < 0:
        raise InvalidArgument("amount must be >= 0 (0 captures the whole reservation)")
    if session.new or session.dirty:
        await session.flush()
    conn = await session.connection()
    reservation = (await conn.execute(_RESERVATION, {"reservation": request.reservation_id})).first()
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
    holds = (await conn.execute(_RESERVATION_HOLDS, {"reservation": reservation.id})).all()
    split = ledger.split_capture([HoldState(h.lot_id, h.amount) for h in holds], amount)
    await conn.execute(
        _CAPTURE_HOLD,
        [{"reservation": reservation.id, "lot": lot_id, "points": captured} for lot_id, captured, _ in split],
    )
    back, repaid = ledger.repay_debt_first(
        [(lot_id, points, h.expires_at) for h, (lot_id, _, points) in zip(holds, split, strict=True) if points > 0],
        wallet.debt,
        now,
    )
    returns = [{"lot": lot_id, "points": points} for lot_id, points in back if points > 0]
    if returns:
        await conn.execute(_RETURN_TO_LOT, returns)
    returned_total = reservation.amount - amount
    member = wallet.member_id
    spent = reservation.reason or f"Spent at {reservation.source_service}"
    entry = await post_entry(
        session,
        wallet,
        kind="spend",
        postings={
            account_held(member): -reservation.amount,
            account_redeemed(reservation.source_service): amount,
            account_available(member): returned_total - repaid,
            account_debt(member): repaid,
        },
        explanation=spent + (f" ({repaid} of the points returned repaid debt)" if repaid else ""),
        source_service=reservation.source_service,
        source_ref=reservation.source_ref,
        now=now,
    )
    await conn.execute(_MARK_CAPTURED, {"reservation": reservation.id, "points": amount, "entry": entry.entry_id})
    if any(h.expires_at <= now for h, (_, _, back) in zip(holds, split, strict=True) if back > 0):
        await expire_due_lots(session, wallet, now)  # returned points of a lot that expired meanwhile
    publish(
        session,
        "points.ledger.captured",
        ev.Captured(
            entry_id=entry.entry_id,
            reservation_id=reservation.reservation_id if event_reservation_id else "",
            member_id=member,
            captured=amount,
            returned=returned_total,
            source_service=reservation.source_service,
            source_ref=reservation.source_ref,
            balance_after=wallet.available,
            idempotency_key=request.idempotency_key,
            captured_at=ts(now),
        ),
        member_id=member,
    )
    count_on_commit(session, points_spent, amount, reservation.source_service)
    return pb.CaptureResponse(
        captured=amount, returned=returned_total, entry_id=entry.entry_id, balance_after=wallet.available
    )


async def void(
    session: AsyncSession, wallet: Wallet | None, now: datetime, *, caller: str, request: pb.VoidRequest
) -> pb.VoidResponse:
    reservation = await _reservation(session, caller, reservation_id=request.reservation_id)
    assert wallet is not None
    if reservation.status == "captured":
        raise FailedPrecondition("the reservation was captured; use Refund")
    released = 0
    if reservation.status == "open":
        released = await release(session, wallet, reservation, "requested", request.idempotency_key, now)
        await expire_due_lots(session, wallet, now)
    return pb.VoidResponse(released=released, balance_after=wallet.available)


async def refund(
    session: AsyncSession, wallet: Wallet | None, now: datetime, *, caller: str, request: pb.RefundRequest
) -> pb.RefundResponse:
    target = request.WhichOneof("target")
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
    lots = {lot.id: lot for lot in await member_lots(session, wallet.member_id, with_empty=True)}
    holds = await _holds(session, reservation)
    plan = ledger.plan_refund(
        [HoldState(h.lot_id, h.amount, h.captured, h.refunded, lots[h.lot_id].expires_at) for h in holds],
        amount,
        now,
    )
    by_lot = {h.lot_id: h for h in holds}
    back_to_lots, repaid = ledger.repay_debt_first(
        [(lot_id, back, lots[lot_id].expires_at) for lot_id, back, _ in plan if back > 0], wallet.debt, now
    )
    returned = lost = 0
    for lot_id, back, gone in plan:
        by_lot[lot_id].refunded += back + gone
        lots[lot_id].expired += gone
        session.add_all([by_lot[lot_id], lots[lot_id]])
        returned, lost = returned + back, lost + gone
    for lot_id, points in back_to_lots:
        lots[lot_id].remaining += points
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
    publish(
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
    return pb.RefundResponse(
        refunded=returned, expired_not_returned=lost, entry_id=entry.entry_id, balance_after=wallet.available
    )


async def clawback(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    caller: str,
    request: pb.ClawbackRequest,
    at_most: bool = False,
) -> pb.ClawbackResponse:
    """Take back (part of) the points a service credited. Only points the member still benefits
    from are taken: points of the credit that expired are gone already. `at_most` takes what is
    left when the amount asked is more (a refund's share, after some of its points expired)."""
    target = request.WhichOneof("target")
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
        plan = ledger.plan_clawback(lot_state(credit_lot), (lot_state(lot) for lot in all_lots), share, now)
        for lot_id, take in plan.takes:
            lots_by_id[lot_id].remaining -= take
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
    publish(
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
    return pb.ClawbackResponse(
        clawed_back=amount, debt_created=debt, entry_id=entry.entry_id, balance_after=wallet.available
    )


# ---- earning ---------------------------------------------------------------------------------


async def services_used(session: AsyncSession, member_id: str, month: str) -> list[str]:
    return sorted(
        (
            await session.exec(
                select(ServiceUse.service).where(ServiceUse.member_id == member_id, ServiceUse.month == month)
            )
        ).all()
    )


async def record_service_use(session: AsyncSession, member_id: str, service: str, now: datetime) -> None:
    month = ledger.month_key(now)
    if await session.get(ServiceUse, (member_id, month, service)) is None:
        session.add(ServiceUse(member_id=member_id, month=month, service=service))
        await session.flush()


async def quote_and_count(
    session: AsyncSession, wallet: Wallet, rules: ledger.EarnRules, service: str, units: int, now: datetime
) -> ledger.EarnQuote:
    """Quote an earn and count it against the member's monthly cap (under the wallet lock), with the
    live campaigns the member qualifies for (before this purchase counts as a use of the service)."""
    from points import campaigns  # campaigns builds on the store

    rules = await campaigns.with_campaigns(session, rules, wallet, service, now)
    month = ledger.month_key(now)
    if wallet.earn_month != month:
        wallet.earn_month, wallet.earned_this_month = month, 0
    await record_service_use(session, wallet.member_id, service, now)
    used = await services_used(session, wallet.member_id, month)
    quote = ledger.quote_earn(rules, service, units, used, wallet.earned_this_month, now)
    wallet.earned_this_month += quote.total
    session.add(wallet)
    return quote


async def preview_earn(
    session: AsyncSession, rules: ledger.EarnRules, member_id: str, service: str, units: int, now: datetime
) -> ledger.EarnQuote:
    """What a purchase would earn the member now (read-only: nothing counted, nothing locked). An
    unknown member is quoted as a new one: nothing earned this month, no other services used."""
    from points import campaigns  # campaigns builds on the store

    month = ledger.month_key(now)
    wallet = await session.get(Wallet, member_id)
    rules = await campaigns.with_campaigns(session, rules, wallet, service, now)
    earned = wallet.earned_this_month if wallet is not None and wallet.earn_month == month else 0
    used = set(await services_used(session, member_id, month)) | {service}
    return ledger.quote_earn(rules, service, units, used, earned, now)


# ---- reads -----------------------------------------------------------------------------------


def _balance_query() -> Any:
    now = bindparam("now", type_=RESERVATIONS.c.expires_at.type)
    due_reservation = exists().where(
        RESERVATIONS.c.member_id == WALLETS.c.member_id,
        RESERVATIONS.c.status == "open",
        RESERVATIONS.c.expires_at <= now,
    )
    earning = (
        core_select(func.coalesce(func.sum(PENDING.c.regular + PENDING.c.bonus + PENDING.c.merchant_bonus), 0))
        .where(PENDING.c.member_id == WALLETS.c.member_id, PENDING.c.status == "pending")
        .scalar_subquery()
    )
    return (
        core_select(
            WALLETS.c.held,
            WALLETS.c.debt,
            due_reservation.label("due"),
            earning.label("earning"),
            LOTS.c.kind,
            LOTS.c.expires_at,
            func.sum(LOTS.c.remaining).label("points"),
        )
        .select_from(WALLETS)
        .outerjoin(LOTS, and_(LOTS.c.member_id == WALLETS.c.member_id, LOTS.c.remaining > 0))
        .where(WALLETS.c.member_id == bindparam("member"))
        .group_by(WALLETS.c.member_id, WALLETS.c.held, WALLETS.c.debt, LOTS.c.kind, LOTS.c.expires_at)
    )


_BALANCE_QUERY = _balance_query()


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
    rows = (await conn.execute(_BALANCE_QUERY, {"member": member_id, "now": now})).all()
    if not rows:
        return Balance(), False
    lots = [(row.kind, row.expires_at, int(row.points)) for row in rows if row.kind is not None]
    due = bool(rows[0].due) or any(at <= now for _, at, _ in lots)
    regular = sum(n for kind, _, n in lots if kind == REGULAR)
    limited = sum(n for kind, _, n in lots if kind == LIMITED_TIME)
    expiring = None
    if lots:
        soonest = min(at for _, at, _ in lots)
        expiring = Expiring(sum(n for _, at, n in lots if at == soonest), soonest)
    balance = Balance(
        total=regular + limited,
        regular=regular,
        limited_time=limited,
        pending=int(rows[0].held),
        debt=int(rows[0].debt),
        earning=int(rows[0].earning or 0),
        expiring_soon=expiring,
    )
    return balance, due


@asynccontextmanager
async def reader(db: Database) -> AsyncIterator[AsyncConnection]:
    """A connection for one-statement reads: autocommit, so no BEGIN/ROLLBACK round trips."""
    async with db.engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


async def get_balance(db: Database, member_id: str, now: datetime) -> Balance:
    """GetBalance: one read; only when something fell due, settle it first and read again."""
    async with reader(db) as conn:
        response, due = await read_balance(conn, member_id, now)
    if not due:
        return response
    async with db.transaction() as session:
        wallet = await lock_wallet(session, member_id)
        if wallet is not None:
            await settle_due(session, wallet, now)
    async with reader(db) as conn:
        response, _ = await read_balance(conn, member_id, now)
    return response


@dataclass(frozen=True)
class HistoryLine:
    """One line of a member's history: a posted entry, an open hold or a pending earning."""

    entry_id: str
    kind: str  # credit | spend | refund | clawback | expiry | hold | earning
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
    conn: AsyncConnection,
    member_id: str,
    page_size: int,
    page_token: str,
    *,
    now: datetime,
    speaker: Speaker,
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


async def members_with_due(session: AsyncSession, now: datetime, limit: int) -> list[str]:
    lots = select(Lot.member_id).where(col(Lot.remaining) > 0, col(Lot.expires_at) <= now)
    reservations = select(Reservation.member_id).where(Reservation.status == "open", col(Reservation.expires_at) <= now)
    found = set((await session.exec(lots.distinct().limit(limit))).all())
    found |= set((await session.exec(reservations.distinct().limit(limit))).all())
    return sorted(found)[:limit]


async def earn(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    member_id: str,
    amount_minor: int,
    currency: str,
    service: str,
    source_ref: str,
    key: str,
    rules: ledger.EarnRules,
    regular_expiry_months: int,
    limits: Limits,
) -> pb.EarnResponse:
    """Credit what a purchase earns under the earn rules (regular points, plus campaign points)."""
    check_money(amount_minor, currency, limits, "purchase")
    wallet = require_active(wallet, member_id)
    quote = await quote_and_count(session, wallet, rules, service, ledger.currency_units(amount_minor, currency), now)
    return await grant(
        session,
        wallet,
        now,
        quote=quote,
        service=service,
        label=rules.label(service),
        source_ref=source_ref,
        key=key,
        regular_expiry_months=regular_expiry_months,
        limits=limits,
    )


async def grant(
    session: AsyncSession,
    wallet: Wallet,
    now: datetime,
    *,
    quote: ledger.EarnQuote,
    service: str,
    label: str,
    source_ref: str,
    key: str,
    regular_expiry_months: int,
    limits: Limits,
    what: str = "",
) -> pb.EarnResponse:
    """Credit an earn quote: its regular points, and its campaign points as a limited-time lot.
    `what` is the purchase as the member reads it (default: its reference)."""
    what = what or source_ref
    where = f"Earned at {label}" + (f" on {what}" if what else "")
    response = pb.EarnResponse(
        earned=quote.regular,
        bonus=quote.bonus,
        explanation=quote.explanation,
        rate_bp=quote.rate_bp,
        balance_after=wallet.available,
    )
    if quote.regular > 0:
        done = await credit(
            session,
            wallet,
            now,
            member_id=wallet.member_id,
            amount=quote.regular,
            kind=REGULAR,
            reason=f"{where}: {quote.explanation}",
            source_service=service,
            source_ref=source_ref,
            expires_at=None,
            key=key,
            regular_expiry_months=regular_expiry_months,
            limits=limits,
        )
        response.entry_id, response.balance_after = done.entry_id, done.balance_after
    if quote.bonus > 0:
        done = await credit(
            session,
            wallet,
            now,
            member_id=wallet.member_id,
            amount=quote.bonus,
            kind=LIMITED_TIME,
            reason=f"{where}: campaign bonus",
            source_service=service,
            source_ref=source_ref,
            expires_at=quote.bonus_expires_at,
            key=key,
            regular_expiry_months=regular_expiry_months,
            limits=limits,
        )
        response.bonus_entry_id, response.balance_after = done.entry_id, done.balance_after
    return response
