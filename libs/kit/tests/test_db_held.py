"""`Database.held()`: one pooled connection kept for a caller's statements between them. The
statements share one server session; callers side by side take turns; a statement error leaves
the connection held, while a dead connection or a cancelled statement drops it and the next
statement runs on a fresh one; disposing the database gives the connection back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from kizuna.kit.db import Database, HeldConnection
from kizuna.kit.testing import wait_until
from sqlalchemy.pool import QueuePool

PID = "SELECT pg_backend_pid() AS pid"


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=2)
    yield database
    await database.dispose()


@pytest.fixture
async def admin(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, beside the pool, to watch and end the pool's."""
    conn = await asyncpg.connect(postgres_url)
    yield conn
    await conn.close()


def _pool(db: Database) -> QueuePool:
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)
    return pool


async def _pid(held: HeldConnection) -> int:
    rows = await held.fetch("SELECT", PID)
    pid: int = rows[0]["pid"]
    return pid


async def test_statements_share_one_connection_taking_turns_until_it_is_given_back(db: Database) -> None:
    held = db.held()
    assert not held.holding and _pool(db).checkedout() == 0
    first = await _pid(held)
    assert held.holding and _pool(db).checkedout() == 1
    # Side by side: one statement at a time on the one connection (asyncpg refuses two).
    rows = await asyncio.gather(
        *(held.fetch("SELECT", "SELECT pg_backend_pid() AS pid, pg_sleep(0.01)") for _ in range(6))
    )
    assert {row[0]["pid"] for row in rows} == {first}
    assert _pool(db).checkedout() == 1
    await held.release()
    assert not held.holding and _pool(db).checkedout() == 0
    assert await _pid(held) == first, "taken from the pool again: the same idle connection"
    await db.dispose()
    assert not held.holding, "disposing the database gave it back"


async def test_a_statement_error_is_the_callers_and_the_connection_stays_held(db: Database) -> None:
    held = db.held()
    pid = await _pid(held)
    with pytest.raises(asyncpg.UndefinedTableError):
        await held.fetch("SELECT nowhere", "SELECT * FROM nowhere")
    assert held.holding and await _pid(held) == pid


async def test_a_dead_connection_is_dropped_and_the_statement_runs_on_a_fresh_one(
    db: Database, admin: asyncpg.Connection
) -> None:
    held = db.held()
    ended = await _pid(held)
    await admin.execute("SELECT pg_terminate_backend($1)", ended)

    async def gone() -> bool:
        left: int = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", ended)
        return left == 0

    await wait_until(gone, timeout=10)
    fresh = await _pid(held)
    assert fresh != ended and held.holding
    assert _pool(db).checkedout() == 1, "the dead one left the pool"


async def test_a_cancelled_statement_drops_its_connection(db: Database, admin: asyncpg.Connection) -> None:
    held = db.held()
    interrupted = await _pid(held)
    slow = asyncio.create_task(held.fetch("SELECT pg_sleep", "SELECT pg_sleep(30)"))

    async def sleeping() -> bool:
        state: str | None = await admin.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", interrupted)
        return state == "PgSleep"

    await wait_until(sleeping, timeout=10)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert not held.holding, "a connection left mid-statement is not used again"
    assert await _pid(held) != interrupted


async def test_held_connections_are_for_postgresql_only(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    try:
        with pytest.raises(RuntimeError, match="for PostgreSQL"):
            db.held()
    finally:
        await db.dispose()
