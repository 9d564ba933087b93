"""Fintech's idempotency keys: the kit's `run_once` over fintech's own table (see kizuna.kit.idempotency).

Same key + same input -> the first result (or the first refusal); same key + different input ->
ALREADY_EXISTS. The operation and its record commit together.
"""

from __future__ import annotations

from typing import Any

from kizuna.kit import idempotency
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database

from fintech.models import IdempotencyRecord


async def run_once(
    db: Database, clock: Clock, *, scope: str, key: str, request: dict[str, Any], operation: idempotency.Operation
) -> idempotency.Result:
    """Run `operation` in a transaction at most once per (scope, key)."""
    return await idempotency.run_once(
        db, clock, IdempotencyRecord, scope=scope, key=key, request=request, operation=operation
    )
