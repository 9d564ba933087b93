"""Idempotency keys, one way for every service: a retried request gets the first outcome.

- `check_key`: a key is 1 to 200 printable ASCII characters (no spaces, no control characters).
- `fingerprint`: what the request asked for (without its key), as one hash format everywhere.
- Same key + same request -> the first result, or the first refusal again (refusals are remembered
  with `refusal_of` and raised again with `refusal`); same key + another request -> ALREADY_EXISTS.

A request whose whole effect is one transaction runs through `run_once`, which stores its outcome in
the service's own table (a subclass of `IdempotencyRecordBase`), in the same transaction:

    class IdempotencyRecord(IdempotencyRecordBase, table=True):
        __tablename__ = "fintech_idempotency"

    result = await run_once(db, clock, IdempotencyRecord, scope=f"{member}:transfer", key=key,
                            request={"amount": 500}, operation=transfer)

A saga that spans several transactions and peers (a checkout, a booking) keeps the key and the
fingerprint on its own row and uses `check_key`, `fingerprint`, `ensure_same` and `refusal`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from kizuna.kit import errors
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database, UTCDateTime
from kizuna.kit.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument
from sqlalchemy import JSON
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

MAX_KEY_LENGTH = 200
_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")

Result = dict[str, Any]
Operation = Callable[[AsyncSession], Awaitable[Result]]
R = TypeVar("R", bound="IdempotencyRecordBase")


def check_key(key: str, field: str = "idempotency_key") -> str:
    """The key, if it is 1 to 200 printable ASCII characters; else INVALID_ARGUMENT naming `field`."""
    if not key:
        raise InvalidArgument(f"{field} is required")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"{field} is longer than {MAX_KEY_LENGTH} characters")
    if not _KEY.fullmatch(key):
        raise InvalidArgument(f"{field} may hold only printable ASCII characters, without spaces")
    return key


def fingerprint(request: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the request's fields as canonical JSON (sorted keys; dates, enums as text)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def ensure_same(stored: str, request: Mapping[str, Any], key: str) -> None:
    """ALREADY_EXISTS unless `request` is the one first made with `key` (its fingerprint `stored`)."""
    if stored != fingerprint(request):
        raise AlreadyExists(f"idempotency key {key!r} was already used with a different request")


def refusal_of(exc: DomainError) -> dict[str, str]:
    """What to remember of a refusal, to raise it again for a retry (`refusal`)."""
    return {"error": exc.code, "message": exc.message}


_KIT_ERRORS: dict[str, type[DomainError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, DomainError) and cls is not DomainError
}


def refusal(remembered: Mapping[str, Any], known: Iterable[type[DomainError]] = ()) -> DomainError:
    """The refusal a first attempt ended with, to raise again: the service's own error types
    (`known`) first, then the kit's; an unknown code reads as FAILED_PRECONDITION."""
    code = str(remembered.get("error") or "")
    cls = {c.code: c for c in known}.get(code) or _KIT_ERRORS.get(code, FailedPrecondition)
    return cls(str(remembered.get("message") or "the request was refused"))


class IdempotencyRecordBase(SQLModel):
    """The columns of a service's idempotency table: the first outcome of a keyed request."""

    scope: str = Field(primary_key=True, max_length=160)
    key: str = Field(primary_key=True, max_length=MAX_KEY_LENGTH)
    fingerprint: str = Field(max_length=64)
    outcome: dict[str, Any] = Field(sa_type=JSON)
    created_at: datetime = Field(sa_type=UTCDateTime)


def _replay(record: IdempotencyRecordBase, request: Mapping[str, Any], known: Iterable[type[DomainError]]) -> Result:
    ensure_same(record.fingerprint, request, record.key)
    if "error" in record.outcome:
        raise refusal(record.outcome, known)
    result: Result = record.outcome["result"]
    return result


async def run_once(
    db: Database,
    clock: Clock,
    table: type[R],
    *,
    scope: str,
    key: str,
    request: Mapping[str, Any],
    operation: Operation,
    known_errors: Iterable[type[DomainError]] = (),
) -> Result:
    """Run `operation` in a transaction at most once per (scope, key), remembering its result or refusal.

    The operation's writes and the record commit together. A refusal (a DomainError) rolls the
    operation's writes back with its savepoint and is remembered. When two identical requests race,
    the loser's insert fails on the primary key, its transaction rolls back whole, and it replays
    the winner's outcome."""
    check_key(key)
    print_ = fingerprint(request)
    failure: DomainError | None = None
    try:
        async with db.transaction() as session:
            record = await session.get(table, (scope, key))
            if record is not None:
                return _replay(record, request, known_errors)
            try:
                async with session.begin_nested():
                    result = await operation(session)
                outcome: dict[str, Any] = {"result": result}
            except DomainError as exc:
                failure = exc
                outcome = refusal_of(exc)
            session.add(table(scope=scope, key=key, fingerprint=print_, outcome=outcome, created_at=clock.now()))
            await session.flush()
    except IntegrityError:
        async with db.sessions() as session:
            record = await session.get(table, (scope, key))
            if record is None:
                raise
            return _replay(record, request, known_errors)
    if failure is not None:
        raise failure
    return result
