"""The expiry job: releases timed-out reservations and expires due lots, member by member.

Safe with several replicas: each member is settled under its wallet row lock taken with
`FOR UPDATE SKIP LOCKED`, so replicas share the work instead of queueing on one member, and a
lot with nothing left is never expired twice.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from kizuna.kit.db import Database
from kizuna.kit.service import Runtime

from points import wallets
from points.grpc_api import ledger_of
from points.settings import Settings

log = logging.getLogger("points.expiry")


async def run_expiry(db: Database, now: datetime, batch_size: int = 500) -> int:
    """One pass: settle every member with something due; returns how many members were settled."""
    async with db.sessions() as session:
        members = await wallets.members_with_due(session, now, batch_size)
    settled = 0
    for member_id in members:
        async with db.transaction() as session:
            wallet = await wallets.lock_wallet(session, member_id, skip_locked=True)
            if wallet is not None:
                await wallets.settle_due(session, wallet, now)
                settled += 1
    return settled


async def expiry_job(runtime: Runtime[Settings]) -> None:
    ledger = ledger_of(runtime)
    while not runtime.stopping:
        try:
            await run_expiry(runtime.db, ledger.clock.now(), runtime.settings.expiry_batch_size)
        except Exception:
            log.exception("expiry pass failed; will retry")
        await asyncio.sleep(runtime.settings.expiry_interval_seconds)
