from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from kizuna.kit.service import Runtime
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.telemetry import configure_telemetry

sys.path.insert(0, str(Path(__file__).parent))

from demo.service import service as demo_service


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy, or fail with the last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def reset_streams(nats_url: str, *names: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for name in names:
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass
    await nc.close()


def demo_settings(nats_url: str, database_url: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "kizuna_issuer": "http://127.0.0.1:1",
        "database_url": database_url,
        "http_port": 0,
        "grpc_port": 0,
        "outbox_poll_seconds": 0.2,
        "consumer_max_deliver": 3,
        "log_format": "text",
        **overrides,
    }
    return ServiceSettings(**values)


@pytest.fixture
async def demo(nats_url: str, database_url: str) -> AsyncIterator[Runtime[ServiceSettings]]:
    """The demo service running in this process on a fresh database and clean streams."""
    configure_telemetry("demo")
    await reset_streams(nats_url, "DEMO", "DEADLETTER")
    async with demo_service.running(demo_settings(nats_url, database_url)) as runtime:
        yield runtime
