"""The shop against the REAL points and fintech services: one `python -m points` and one
`python -m fintech` process per test module (they are slow to start and hold no state a test
depends on: every test uses fresh members), the shop itself in-process on a fresh database per
test (SQLite and PostgreSQL), all over real gRPC, HTTP and NATS with tokens from a real issuer."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kizuna.kit.testing import NatsServer, ServiceProcess, TestIssuer, free_port, reset_streams

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services" / "shop" / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

from shop_support import running_shop, shop_api
from shop_world import RealPeers, ShopWorld


@pytest.fixture(scope="module")
def real_peers(
    nats_server: NatsServer, test_issuer: TestIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealPeers]:
    # Start from empty streams so the new processes' durable consumers see only this module's events.
    asyncio.run(reset_streams(nats_server.url, "SHOP", "IDENTITY", "POINTS", "FINTECH"))
    started: list[ServiceProcess] = []
    work = tmp_path_factory.mktemp("shop-peers")

    def start(name: str, env: dict[str, str]) -> ServiceProcess:
        (work / name).mkdir()
        base = {
            "NATS_URL": nats_server.url,
            "KIZUNA_ISSUER": test_issuer.issuer,
            "KIZUNA_DATA_DIR": str(work / name),
            "LOG_FORMAT": "json",
            "OUTBOX_POLL_SECONDS": "0.2",
        }
        proc = ServiceProcess(name, {**base, **env}, free_port(), free_port(), work / f"{name}.log")
        started.append(proc)
        return proc.start(wait=False)

    try:
        points = start("points", {})
        # Fraud velocity is per card; every test uses its own members, so keep the default rules.
        fintech = start("fintech", {"POINTS_ADDR": points.grpc_address, "STATEMENT_INTERVAL_SECONDS": "3600"})
        points.wait_ready()
        fintech.wait_ready()
        yield RealPeers(points, fintech, test_issuer, nats_server.url)
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
async def world(real_peers: RealPeers, database_url: str) -> AsyncIterator[ShopWorld]:
    """The shop in this process on a fresh database, calling the module's real points and fintech."""
    async with (
        running_shop(
            nats_url=real_peers.nats_url,
            database_url=database_url,
            issuer=real_peers.issuer,
            points_addr=real_peers.points.grpc_address,
            fintech_addr=real_peers.fintech.grpc_address,
        ) as runtime,
        shop_api(runtime, real_peers.issuer) as api,
        real_peers.clients() as clients,
    ):
        yield ShopWorld(api, clients)
