"""`Database.driver()` and `Database.fetch()`: hot reads on the pooled connection's own asyncpg
connection. A read outlives its pooled connections being ended (a failover, an administrator):
each dead one is dropped and the read runs on the next; an error of the statement itself is the
caller's, as it is; nothing is left in a transaction."""

from __future__ import annotations

import asyncpg
import pytest
from kizuna.kit.db import Database, driver_disconnect
from kizuna.kit.testing import wait_until


def _database(postgres_url: str) -> Database:
    return Database(postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=2)


async def test_a_read_outlives_every_pooled_connection_being_ended(postgres_url: str) -> None:
    db = _database(postgres_url)
    admin = await asyncpg.connect(postgres_url)
    try:
        async with db.driver("SELECT") as a, db.driver("SELECT") as b, db.driver("SELECT") as c:
            ended = [await conn.fetchval("SELECT pg_backend_pid()") for conn in (a, b, c)]
            assert not a.is_in_transaction(), "each statement commits on its own"
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", ended)

        async def gone() -> bool:
            left = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", ended)
            return left == 0

        await wait_until(gone, timeout=10)
        rows = await db.fetch("SELECT", "SELECT pg_backend_pid() AS pid, $1::int AS one", 1)
        assert rows[0]["one"] == 1 and rows[0]["pid"] not in ended
        async with db.driver("SELECT") as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") not in ended, "the dead connections left the pool"
    finally:
        await admin.close()
        await db.dispose()


async def test_a_statement_error_is_the_callers_and_the_connection_stays(postgres_url: str) -> None:
    db = _database(postgres_url)
    try:
        async with db.driver("SELECT") as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.UndefinedTableError) as failed:
            await db.fetch("SELECT nowhere", "SELECT * FROM nowhere")
        assert not driver_disconnect(failed.value)
        async with db.driver("SELECT") as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
    finally:
        await db.dispose()


async def test_the_driver_is_for_postgresql_only(tmp_path: object) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    try:
        with pytest.raises(RuntimeError, match="for PostgreSQL"):
            async with db.driver("SELECT"):
                pass
    finally:
        await db.dispose()
