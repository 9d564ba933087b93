from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from kizuna.kit.telemetry import configure_telemetry
from travel.service import service as travel_service

from .travel_peers import CardPeer, PointsPeer, start_peer_server
from .travel_support import TRAVEL_SCOPES, TRAVEL_SECRET, Clock, TravelEnv, reset_streams, travel_settings


@pytest.fixture
async def travel(nats_url: str, database_url: str, test_issuer: Any) -> AsyncIterator[TravelEnv]:
    """Travel in this process on a fresh database (SQLite and PostgreSQL), paying through test peers."""
    configure_telemetry("travel")
    test_issuer.register_client("travel", TRAVEL_SECRET, TRAVEL_SCOPES)
    await reset_streams(nats_url, "TRAVEL")
    points, cards = PointsPeer(), CardPeer()
    server, address = await start_peer_server(test_issuer.issuer, points, cards)
    clock = Clock()
    try:
        settings = travel_settings(nats_url, database_url, test_issuer.issuer, address, address)
        async with travel_service.running(settings) as runtime:
            runtime.clock = clock
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=30) as http:
                yield TravelEnv(runtime, http, test_issuer, points, cards, clock)
    finally:
        await server.stop(0)
