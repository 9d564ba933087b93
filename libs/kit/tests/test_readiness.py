"""/readyz says whether this pod can serve: a shared dependency's blip (NATS restarted, the
database refusing connections for a moment, as in a switchover) does not take it out of rotation;
the database does once it has failed for the configured grace. With a real NATS stopped and
started again, and a real PostgreSQL refusing connections."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from kizuna.kit.events import outbox_backlog
from kizuna.kit.telemetry import configure_telemetry
from kizuna.kit.testing import NatsServer, PostgresServer, reset_streams, wait_until

from .demo.service import demo_settings
from .demo.service import service as demo_service


async def _ready(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status_code, response.json()["checks"]


async def test_a_nats_restart_keeps_the_pod_ready_and_events_wait_in_the_outbox(tmp_path: Path) -> None:
    configure_telemetry("demo")
    server = NatsServer(0, tmp_path / "nats").start()
    try:
        settings = demo_settings(server.url, f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
        async with (
            demo_service.running(settings) as runtime,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=10) as client,
        ):
            assert await _ready(client) == (200, {"database": "ok", "nats": "ok"})

            await asyncio.to_thread(server.stop)
            nc = runtime.nc
            assert nc is not None
            assert await wait_until(lambda: _true(not nc.is_connected), timeout=10)
            status, checks = await _ready(client)
            assert status == 200, checks
            assert checks["nats"].startswith("degraded: not connected for"), checks
            assert checks["database"] == "ok"
            assert (await client.get("/healthz")).status_code == 200, "a restart would not bring NATS back"
            # The pod serves meanwhile; the events wait in the outbox and are measured there. The
            # relay retries all along (each try waits for JetStream's ack): on SQLite it must not
            # hold the database's write lock while it waits, or these writes would queue behind it.
            for written in range(1, 4):
                started = time.monotonic()
                assert (await client.post("/notes", json={"text": f"during the blip {written}"})).status_code == 200
                backlog = await outbox_backlog(runtime.db)
                assert backlog.pending == written and backlog.oldest_age_seconds >= 0
                assert time.monotonic() - started < 4, "a write waited for the relay's publish timeout"

            await asyncio.to_thread(server.start)
            assert await wait_until(lambda: _true(nc.is_connected), timeout=20)
            assert await _ready(client) == (200, {"database": "ok", "nats": "ok"})
            assert await wait_until(lambda: _no_backlog(runtime.db), timeout=20)
    finally:
        server.stop()


async def _true(value: bool) -> bool:
    return value


async def _no_backlog(db: Any) -> bool:
    return (await outbox_backlog(db)).pending == 0


async def test_the_database_counts_only_once_it_has_failed_for_the_grace(
    nats_url: str, postgres_server: PostgresServer
) -> None:
    configure_telemetry("demo")
    await reset_streams(nats_url, "DEMO", "DEADLETTER")
    url = await asyncio.to_thread(postgres_server.new_database)
    name = urlsplit(url).path.lstrip("/")  # the embedded server's URL ends in ?host=<socket dir>
    grace = 3.0
    settings = demo_settings(
        nats_url, url.replace("postgresql://", "postgresql+asyncpg://", 1), readiness_dependency_grace_seconds=grace
    )

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_server.admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async with (
        demo_service.running(settings) as runtime,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=10) as client,
    ):
        assert await _ready(client) == (200, {"database": "ok", "nats": "ok"})
        # What a switchover looks like from a pod: its connections drop, new ones are refused.
        await admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        failing_from = time.monotonic()
        try:
            status, checks = await _ready(client)
            assert status == 200, checks
            assert checks["database"].startswith("degraded:") and f"not ready after {grace:.0f} s" in checks["database"]

            async def not_ready() -> dict[str, Any] | None:
                status, checks = await _ready(client)
                return checks if status == 503 else None

            checks = await wait_until(not_ready, timeout=20, interval=0.2)
            assert time.monotonic() - failing_from >= grace
            assert checks["database"].startswith("error:"), checks
            assert checks["nats"] == "ok"
            assert (await client.get("/healthz")).status_code == 200, "a restart would not bring the database back"
        finally:
            await admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

        async def ready_again() -> bool:
            return (await _ready(client))[0] == 200

        assert await wait_until(ready_again, timeout=20, interval=0.2)
        assert await _ready(client) == (200, {"database": "ok", "nats": "ok"})


async def test_a_nats_connection_closed_for_good_takes_the_pod_out(nats_url: str, tmp_path: Path) -> None:
    """The client reconnects for ever unless it is closed (credentials refused, a fatal error):
    then this pod will not publish or consume again, and only it is affected; a restart cures it."""
    configure_telemetry("demo")
    await reset_streams(nats_url, "DEMO", "DEADLETTER")
    settings = demo_settings(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    async with (
        demo_service.running(settings) as runtime,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=10) as client,
    ):
        assert await _ready(client) == (200, {"database": "ok", "nats": "ok"})
        assert runtime.nc is not None
        await runtime.nc.close()
        assert await _ready(client) == (503, {"database": "ok", "nats": "error: connection closed"})
        # A restart cures it: liveness fails too.
        assert (await client.get("/healthz")).status_code == 503
