"""Fintech's idempotency keys: the kit's `run_once` over fintech's own table (see kizuna.kit.idempotency).

Same key + same input -> the first result (or the first refusal); same key + different input ->
ALREADY_EXISTS. The operation and its record commit together. Operations return domain values
(dataclasses); the record keeps their fields as JSON and a replay rebuilds the same value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from kizuna.kit import idempotency
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from pydantic import TypeAdapter
from sqlmodel.ext.asyncio.session import AsyncSession

from fintech.models import IdempotencyRecord

T = TypeVar("T")


_adapters: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(result: type[Any]) -> TypeAdapter[Any]:
    adapter = _adapters.get(result)
    if adapter is None:
        adapter = _adapters[result] = TypeAdapter(result)
    return adapter


async def run_once(
    db: Database,
    clock: Clock,
    *,
    scope: str,
    key: str,
    request: Mapping[str, Any],
    operation: Callable[[AsyncSession], Awaitable[T]],
    result: type[T],
) -> T:
    """Run `operation` in a transaction at most once per (scope, key); its value is a `result`."""
    adapter = _adapter(result)

    async def stored(session: AsyncSession) -> idempotency.Result:
        fields: idempotency.Result = adapter.dump_python(await operation(session), mode="json")
        return fields

    outcome = await idempotency.run_once(
        db, clock, IdempotencyRecord, scope=scope, key=key, request=request, operation=stored
    )
    value: T = adapter.validate_python(outcome)
    return value
