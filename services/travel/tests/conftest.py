from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from kizuna.kit.telemetry import configure_telemetry
from kizuna.kit.testing_stack import Ecosystem
from travel.service import service as travel_service

from .refusing_fintech import RefusingFintech, serve_refusing_fintech
from .travel_support import TRAVEL_SCOPES, TRAVEL_SECRET, Clock, Relay, TravelEnv, travel_settings


@pytest.fixture(scope="module")
def ecosystem_env() -> dict[str, dict[str, str]]:
    # No bonus for using several services: how much a stay earns then does not depend on whether
    # points reads fintech's or travel's stream first (services/points tests the bonus).
    return {"points": {"EARN_BONUS_BP_PER_SERVICE": "0"}}


@pytest.fixture
def travel_overrides() -> dict[str, Any]:
    """Settings a test gives its travel service (`pytest.mark.parametrize` it)."""
    return {}


@pytest.fixture
async def travel(ecosystem: Ecosystem, database_url: str, travel_overrides: dict[str, Any]) -> AsyncIterator[TravelEnv]:
    """Travel in this process on a fresh database (SQLite and PostgreSQL), paying through the
    module's real points and fintech, each behind a relay the test may stall or cut."""
    configure_telemetry("travel")
    ecosystem.issuer.register_client("travel", TRAVEL_SECRET, TRAVEL_SCOPES)
    fintech, points = Relay(ecosystem.fintech_addr), Relay(ecosystem.points_addr)
    settings = travel_settings(
        ecosystem.nats_url,
        database_url,
        ecosystem.issuer.issuer,
        await points.start(),
        await fintech.start(),
        **travel_overrides,
    )
    clock = Clock()
    try:
        async with travel_service.running(settings) as runtime:
            runtime.clock = clock
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=30) as http:
                yield TravelEnv(runtime, http, ecosystem, clock, fintech, points)
    finally:
        await fintech.stop()
        await points.stop()


@pytest.fixture
async def refusing_fintech(ecosystem: Ecosystem) -> AsyncIterator[tuple[RefusingFintech, str]]:
    """A stand-in for fintech's PaymentsService that refuses the calls a test names (see its module)."""
    fintech = RefusingFintech()
    server, address = await serve_refusing_fintech(ecosystem.issuer.issuer, fintech)
    try:
        yield fintech, address
    finally:
        await server.stop(0)
