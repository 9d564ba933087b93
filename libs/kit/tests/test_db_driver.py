"""`Database.driver()` and `Database.fetch()`: hot reads on the pooled connection's own asyncpg
connection. A read outlives its pooled connections being ended (a failover, an administrator):
each dead one is dropped and the read runs on the next; an error of the statement itself is the
caller's, as it is; nothing is left in a transaction; while spans are exported a read in a trace
is a statement span like SQLAlchemy's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
        async with db.driver() as a, db.driver() as b, db.driver() as c:
            ended = [await conn.fetchval("SELECT pg_backend_pid()") for conn in (a, b, c)]
            assert not a.is_in_transaction(), "each statement commits on its own"
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", ended)

        async def gone() -> bool:
            left: int = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", ended)
            return left == 0

        await wait_until(gone, timeout=10)
        rows = await db.fetch("SELECT", "SELECT pg_backend_pid() AS pid, $1::int AS one", 1)
        assert rows[0]["one"] == 1 and rows[0]["pid"] not in ended
        async with db.driver() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") not in ended, "the dead connections left the pool"
    finally:
        await admin.close()
        await db.dispose()


async def test_a_statement_error_is_the_callers_and_the_connection_stays(postgres_url: str) -> None:
    db = _database(postgres_url)
    try:
        async with db.driver() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.UndefinedTableError) as failed:
            await db.fetch("SELECT nowhere", "SELECT * FROM nowhere")
        assert not driver_disconnect(failed.value)
        # A connection whose session the server ended while it sat in the pool can fail its next
        # statement this way (seen under load in this file's first test): dead, not the caller's.
        assert driver_disconnect(asyncpg.exceptions.InternalClientError("another operation is in progress"))
        async with db.driver() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
    finally:
        await db.dispose()


async def test_the_driver_is_for_postgresql_only(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    try:
        with pytest.raises(RuntimeError, match="for PostgreSQL"):
            async with db.driver():
                pass
    finally:
        await db.dispose()


SPANS = """
import asyncio, json, os
from kizuna.kit.db import Database
from kizuna.kit.telemetry import add_span_processor, configure_telemetry, tracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

async def main():
    configure_telemetry("demo")
    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))
    db = Database(os.environ["DB_URL"])
    await db.fetch("SELECT outside", "SELECT 1")  # outside any trace: no span of its own
    with tracer.start_as_current_span("request") as request:
        await db.fetch("SELECT inside", "SELECT $1::int", 2)
    await db.dispose()
    print(json.dumps([
        [s.name, s.kind.name, s.parent.span_id == request.get_span_context().span_id if s.parent else None,
         dict(s.attributes or {})]
        for s in exporter.get_finished_spans()
    ]))

asyncio.run(main())
"""


def test_a_read_in_a_trace_is_a_statement_span_while_spans_are_exported(postgres_url: str, tmp_path: Path) -> None:
    """Telemetry is set up once per process: the check runs in a fresh interpreter."""
    env = {"DB_URL": postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", SPANS], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    spans = json.loads(result.stdout.strip().splitlines()[-1])
    statement = {"db.system.name": "postgresql", "db.operation.name": "SELECT", "db.query.text": "SELECT $1::int"}
    assert spans == [["SELECT inside", "CLIENT", True, statement], ["request", "INTERNAL", None, {}]]
