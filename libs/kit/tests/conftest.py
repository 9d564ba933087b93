from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kizuna.kit.service import Runtime
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.telemetry import configure_telemetry
from kizuna.kit.testing import reset_streams

from .demo.service import demo_settings
from .demo.service import service as demo_service


@pytest.fixture
async def demo(nats_url: str, database_url: str) -> AsyncIterator[Runtime[ServiceSettings]]:
    """The demo service running in this process on a fresh database and clean streams."""
    configure_telemetry("demo")
    await reset_streams(nats_url, "DEMO", "DEADLETTER")
    async with demo_service.running(demo_settings(nats_url, database_url)) as runtime:
        yield runtime
