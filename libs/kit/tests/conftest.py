from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kizuna.kit.service import Runtime
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.telemetry import configure_telemetry
from kizuna.kit.testing import reset_streams, wait_until  # noqa: F401 (re-exported for the tests)

sys.path.insert(0, str(Path(__file__).parent))

from demo.service import service as demo_service


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
