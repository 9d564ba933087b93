"""The shop against the REAL points and fintech services (the kit's `ecosystem` fixture: one
`python -m points` and one `python -m fintech` process per test module, every test with fresh
members), the shop itself in-process on a fresh database per test (SQLite and PostgreSQL), all
over real gRPC, HTTP and NATS with tokens from a real issuer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kizuna.kit.testing_stack import Ecosystem

from services.shop.tests.shop_support import running_shop, shop_api

from .shop_world import ShopWorld


@pytest.fixture
async def world(ecosystem: Ecosystem, database_url: str) -> AsyncIterator[ShopWorld]:
    """The shop in this process on a fresh database, calling the module's real points and fintech."""
    async with (
        running_shop(
            nats_url=ecosystem.nats_url,
            database_url=database_url,
            issuer=ecosystem.issuer,
            points_addr=ecosystem.points_addr,
            fintech_addr=ecosystem.fintech_addr,
        ) as runtime,
        shop_api(runtime, ecosystem.issuer) as api,
    ):
        yield ShopWorld(api, ecosystem)
