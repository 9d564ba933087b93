"""Migrations as Kubernetes runs them: several replicas' init containers start at once."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import asyncpg

DEMO_MIGRATIONS = Path(__file__).parent / "demo" / "migrations"


async def test_replicas_migrating_at_once_all_succeed_and_migrate_once(postgres_url: str) -> None:
    url = postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    # Separate processes, as replicas are (Alembic's command context is per process), released
    # at one instant once imported, so that their migrations overlap.
    start_at = time.time() + 4
    script = (
        "import time; from kizuna.kit import migrations; "
        f"time.sleep(max(0, {start_at} - time.time())); "
        f"migrations.upgrade({url!r}, {str(DEMO_MIGRATIONS)!r})"
    )
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE)
        for _ in range(4)
    ]
    outcomes = [(p, (await p.communicate())[1].decode()) for p in procs]
    assert [err for p, err in outcomes if p.returncode != 0] == []
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetch("SELECT version_num FROM alembic_version") == [("demo_0001",)]
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"kit_outbox", "kit_inbox", "demo_note", "demo_effect"} <= tables
    finally:
        await conn.close()
