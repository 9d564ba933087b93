"""A benchmark's own PostgreSQL database: created fresh under a unique name, dropped after."""

from __future__ import annotations

import os
import uuid

import asyncpg

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def create_database(prefix: str) -> tuple[str, str]:
    """A new empty database on the server at BENCH_POSTGRES_URL: its name and its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    return name, await named_database(name)


async def named_database(name: str) -> str:
    """The URL of the database `name` on the server at BENCH_POSTGRES_URL, created if missing (a
    benchmark's data kept from one run to the next, with `--seeded`)."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(name: str) -> None:
    """Drop a database `create_database` made (its connections closed first)."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def add_wallets(url: str, count: int, *, available: int = 0, first: int = 1) -> None:
    """`count` active points wallets, `bench-<n>` from n = `first`, each holding `available` points,
    on the database at `url` (points' schema); wallets already there are left as they are."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """INSERT INTO points_wallet (member_id, status, available, held, debt, earn_month, earned_this_month,
              created_at)
            SELECT 'bench-' || i, 'active', $3, 0, 0, '2025-01', 0, now() FROM generate_series($1::int, $2::int) i
            ON CONFLICT DO NOTHING""",
            first,
            first + count - 1,
            available,
        )
    finally:
        await conn.close()


async def analyze(url: str) -> None:
    """ANALYZE the database at `url`, as autovacuum would after the tables grew. A bench database
    is new and its tables start empty; a server without autovacuum (a test server may run without)
    would keep the plans that prepared statements chose on the empty tables, sequential scans that
    grow slower with every row a bench adds. Run it after a warm-up, before measuring: the next
    run of each prepared statement is planned on the new statistics."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def checkpoint(url: str) -> None:
    """CHECKPOINT the server at `url`: the dirty pages one phase left are written now, not by the
    checkpointer during the next phase. Needs a superuser or pg_checkpoint; without, it is skipped, and said."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        print("no CHECKPOINT between phases (needs a superuser or pg_checkpoint)")
    finally:
        await conn.close()
