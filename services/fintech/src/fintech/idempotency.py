"""Idempotency keys: the first outcome of a keyed request is stored and replayed.

Same key + same input -> the first result (or the first error: rejected attempts are remembered);
same key + different input -> ALREADY_EXISTS. The operation and its record commit together;
when two identical requests race, the loser's transaction fails on the record's primary key,
rolls back completely, and replays the winner's outcome.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from kizuna.kit import errors
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.errors import AlreadyExists, DomainError, InvalidArgument
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from fintech.models import IdempotencyRecord

Result = dict[str, Any]
Operation = Callable[[AsyncSession], Awaitable[Result]]

_ERRORS: dict[str, type[DomainError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.PermissionDenied,
    )
}


def fingerprint(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def _replay(record: IdempotencyRecord, print_: str) -> Result:
    if record.fingerprint != print_:
        raise AlreadyExists(f"idempotency key {record.key!r} was already used with a different request")
    outcome = record.outcome
    if "error" in outcome:
        raise _ERRORS.get(outcome["error"], InvalidArgument)(outcome["message"])
    result: Result = outcome["result"]
    return result


async def run_once(
    db: Database, clock: Clock, *, scope: str, key: str, request: dict[str, Any], operation: Operation
) -> Result:
    """Run `operation` in a transaction at most once per (scope, key); see the module docstring."""
    if not key:
        raise InvalidArgument("idempotency_key is required")
    if len(key) > 200:
        raise InvalidArgument("idempotency_key is longer than 200 characters")
    print_ = fingerprint(request)
    failure: DomainError | None = None
    try:
        async with db.transaction() as session:
            record = await session.get(IdempotencyRecord, (scope, key))
            if record is not None:
                return _replay(record, print_)
            try:
                async with session.begin_nested():
                    result = await operation(session)
                outcome: dict[str, Any] = {"result": result}
            except DomainError as exc:
                # The operation's writes are rolled back with the savepoint; the refusal is kept.
                failure = exc
                outcome = {"error": exc.code, "message": exc.message}
            session.add(
                IdempotencyRecord(scope=scope, key=key, fingerprint=print_, outcome=outcome, created_at=clock.now())
            )
            await session.flush()
    except IntegrityError:
        async with db.sessions() as session:
            record = await session.get(IdempotencyRecord, (scope, key))
            if record is None:
                raise
            return _replay(record, print_)
    if failure is not None:
        raise failure
    return result
