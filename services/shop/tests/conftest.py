from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kizuna.kit.testing import TestIssuer

from .shop_peers import PaymentsPeer, PointsPeer, serve_payments, serve_points
from .shop_support import ShopApi, reset_streams, running_shop, shop_api


@pytest.fixture
def points_peer() -> PointsPeer:
    return PointsPeer()  # type: ignore[abstract]  # It answers only the RPCs the shop calls.


@pytest.fixture
def payments_peer() -> PaymentsPeer:
    return PaymentsPeer()


@pytest.fixture
def shop_overrides() -> dict[str, Any]:
    """Settings of the shop under test besides `running_shop`'s (a test parametrizes it)."""
    return {}


@pytest.fixture
async def api(
    nats_url: str,
    database_url: str,
    test_issuer: TestIssuer,
    points_peer: PointsPeer,
    payments_peer: PaymentsPeer,
    shop_overrides: dict[str, Any],
) -> AsyncIterator[ShopApi]:
    """The shop in this process on a fresh database, with test peers for points and fintech."""
    await reset_streams(nats_url, "SHOP")
    points_server, points_addr = await serve_points(points_peer, test_issuer.issuer)
    payments_server, payments_addr = await serve_payments(payments_peer, test_issuer.issuer)
    try:
        async with (
            running_shop(
                nats_url=nats_url,
                database_url=database_url,
                issuer=test_issuer,
                points_addr=points_addr,
                fintech_addr=payments_addr,
                **shop_overrides,
            ) as runtime,
            shop_api(runtime, test_issuer) as client,
        ):
            yield client
    finally:
        await points_server.stop(0)
        await payments_server.stop(0)
