"""Idempotent execution: `Ledger.execute` records the first outcome of each (caller, key), success
or rejection, in the same transaction as the effect (a rejection in a second short one), and
replays it for a retry with the same key."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from kizuna.kit import errors
from kizuna.kit.db import Database, OnDriver, is_disconnect
from kizuna.kit.errors import (
    AlreadyExists,
    DomainError,
    InvalidArgument,
)
from sqlalchemy import ARRAY, bindparam, insert, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from points.journal import RECORDS
from points.models import (
    Entry,
    Wallet,
)
from points.wallets import NOT_REMEMBERED, Member, lock_for_operation, settle_due

R = TypeVar("R", bound=Message)

INSERT_RECORD = insert(RECORDS)
# A group's records (PostgreSQL, group_commit) in one statement of arrays, on the driver's
# connection: SQLAlchemy's executemany of INSERT_RECORD cost more CPU than the statement.
_RECORD_COLUMNS = (
    "caller",
    "key",
    "operation",
    "request_hash",
    "response",
    "error_code",
    "error_message",
    "created_at",
)
_INSERT_RECORDS_PG = OnDriver(
    text("""INSERT INTO points_idempotency (caller, key, operation, request_hash, response, error_code,
  error_message, created_at)
SELECT * FROM unnest(:caller, :key, :operation, :request_hash, :response, :error_code, :error_message,
  :created_at)""").bindparams(*(bindparam(name, type_=ARRAY(RECORDS.c[name].type)) for name in _RECORD_COLUMNS)),
    "INSERT points_idempotency",
)


async def insert_records_pg(session: AsyncSession, records: list[dict[str, Any]]) -> None:
    """Write the idempotency records of a group (`record_values`) in one statement (PostgreSQL)."""
    await _INSERT_RECORDS_PG.fetch(session, {name: [r[name] for r in records] for name in _RECORD_COLUMNS})


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


def replay(record: Any, operation: str, digest: str, key: str, response_type: type[R]) -> R | DomainError:
    if record.operation != operation or record.request_hash != digest:
        return AlreadyExists(f"idempotency key {key!r} was already used with a different request")
    if record.error_code is not None:
        return _ERRORS.get(record.error_code, DomainError)(record.error_message or "")
    response = response_type()
    response.ParseFromString(record.response or b"")
    return response


def check_key(key: str) -> DomainError | None:
    if not key:
        return InvalidArgument("idempotency_key is required")
    if len(key) > 200:
        return InvalidArgument("idempotency_key is longer than 200 characters")
    return None


def record_values(
    caller: str, key: str, operation: str, digest: str, now: datetime, outcome: Message | DomainError
) -> dict[str, Any]:
    """The idempotency record of a first outcome (every column, so many go in one executemany)."""
    values: dict[str, Any] = {"caller": caller, "key": key, "operation": operation, "request_hash": digest}
    if isinstance(outcome, DomainError):
        values.update(response=None, error_code=outcome.code, error_message=outcome.message)
    else:
        values.update(response=outcome.SerializeToString(deterministic=True), error_code=None, error_message=None)
    values["created_at"] = now
    return values


async def _remember(
    session: AsyncSession,
    caller: str,
    key: str,
    operation: str,
    digest: str,
    now: datetime,
    outcome: Message | DomainError,
) -> None:
    values = record_values(caller, key, operation, digest, now, outcome)
    await session.flush()  # the effect's ORM changes go first, so a key race fails before commit
    conn = await session.connection()
    await conn.execute(INSERT_RECORD, values)


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
    invalid = check_key(key)
    if invalid is not None:
        return invalid
    digest = request_hash(operation, request)
    locked = await lock_for_operation(session, member or Member(member_id or ""), caller, key, now)
    if locked.record is not None:
        return replay(locked.record, operation, digest, key, response_type)
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
        return replay(locked.record, operation, digest, key, response_type)
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
        # A failover may leave every pooled connection dead: each is dropped as it is found so.
        attempts = max(5, self.db.pool_capacity + 1)
        for attempt in range(attempts):
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
                if attempt >= 4:
                    raise
            except Exception as exc:
                # A dead pooled connection (the pool drops it and every older one): run it again;
                # if the lost COMMIT had gone through, the next attempt replays its record.
                if not is_disconnect(exc) or attempt == attempts - 1:
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
