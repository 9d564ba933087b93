"""`one_moment(session)`: every query of the session's transaction reads one snapshot, so a check
across several queries (a ledger's audit) on a live database never sees a write half-way; a
session that has queried already is refused rather than run a snapshot per query."""

from __future__ import annotations

from typing import Any

import pytest
from kizuna.kit.db import Database, one_moment
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession


async def _run(session: AsyncSession, sql: str) -> Any:
    return await (await session.connection()).execute(text(sql))


async def test_a_commit_between_two_queries_is_not_seen_and_a_used_session_is_refused(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            await _run(session, "CREATE TABLE counted (n INTEGER)")
            await _run(session, "INSERT INTO counted VALUES (1)")
        async with db.sessions() as session:
            await one_moment(session)
            first = (await _run(session, "SELECT count(*) FROM counted")).scalar_one()
            if not db.is_sqlite:  # SQLite's one writer would wait for this reader to finish
                async with db.transaction() as other:
                    await _run(other, "INSERT INTO counted VALUES (2)")
            again = (await _run(session, "SELECT count(*) FROM counted")).scalar_one()
            assert first == again == 1
            if not db.is_sqlite:
                with pytest.raises(RuntimeError, match="has not queried yet"):
                    await one_moment(session)
        async with db.sessions() as session:
            assert (await _run(session, "SELECT count(*) FROM counted")).scalar_one() == (1 if db.is_sqlite else 2)
    finally:
        await db.dispose()
