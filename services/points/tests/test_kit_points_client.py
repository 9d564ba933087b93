"""The kit's PointsClient (what shop, travel, fintech and any new service spend points with),
against the real points service: token per call, idempotency keys, refusals as domain errors."""

from __future__ import annotations

from typing import TypedDict

import pytest
from kizuna.kit.auth import ServiceTokenClient
from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from kizuna.kit.points import PointsClient

from .pointskit import Points


class Order(TypedDict):
    """What every reservation of one order passes to the kit client."""

    member_id: str
    member_token: str
    reason: str
    ref: str


async def test_a_service_reserves_captures_refunds_and_voids_through_the_kit_client(points: Points) -> None:
    points.issuer.register_client("shop", "shop-secret", "points:spend points:read")
    tokens = ServiceTokenClient(points.issuer.issuer, "shop", "shop-secret")
    client = PointsClient(f"127.0.0.1:{points.runtime.grpc_port}", tokens, service="shop")
    await points.register("m")
    await points.credit("m", 500)
    member = points.issuer.member_token("m")
    order: Order = {"member_id": "m", "member_token": member, "reason": "Order o1", "ref": "o1"}
    try:
        assert await client.balance("m") == 500
        reservation = await client.reserve(amount=300, key="o1:reserve", **order)
        # A retried step with the same key is the same reservation, not a second hold.
        assert await client.reserve(amount=300, key="o1:reserve", **order) == reservation
        assert await client.balance("m") == 200

        captured = await client.capture(reservation, "o1:capture", amount=200)
        assert (captured.captured, captured.returned) == (200, 100)
        assert await client.balance("m") == 300
        assert await client.refund(reservation, "o1:refund", amount=50, reason="one item returned") == 50
        assert await client.balance("m") == 350

        second = await client.reserve(amount=100, key="o2:reserve", **(order | {"ref": "o2"}))
        assert await client.void(second, "o2:void") == 100
        assert await client.balance("m") == 350

        with pytest.raises(FailedPrecondition, match=r"^points: "):
            await client.reserve(amount=10_000, key="o3:reserve", **(order | {"ref": "o3"}))
        with pytest.raises(NotFound, match=r"^points: "):
            await client.capture("rsv_unknown", "o4:capture")
        # Only the member can let a service spend their points: another member's token is refused.
        with pytest.raises(PermissionDenied):
            await client.reserve(
                amount=1, key="o5:reserve", **(order | {"member_token": points.issuer.member_token("x")})
            )
        assert await client.balance("m") == 350
    finally:
        await client.close()
        await tokens.aclose()


async def test_without_a_client_secret_the_kit_client_says_so(points: Points) -> None:
    client = PointsClient(f"127.0.0.1:{points.runtime.grpc_port}", None, service="travel")
    with pytest.raises(Unavailable, match="travel has no client secret"):
        await client.balance("m")


async def test_a_product_page_previews_what_a_purchase_earns_through_the_kit_client(points: Points) -> None:
    points.issuer.register_client("travel", "travel-secret", "points:read")
    tokens = ServiceTokenClient(points.issuer.issuer, "travel", "travel-secret")
    client = PointsClient(f"127.0.0.1:{points.runtime.grpc_port}", tokens, service="travel")
    await points.register("m")
    try:
        preview = await client.preview_earn(member_id="m", amount_minor=25_000, currency="JPY")
        assert (preview.regular, preview.bonus, preview.total, preview.explanation) == (250, 0, 250, "1% base")
        assert await client.balance("m") == 0  # a preview credits nothing
        with pytest.raises(InvalidArgument, match=r"^points: "):
            await client.preview_earn(member_id="m", amount_minor=-1)
    finally:
        await client.close()
        await tokens.aclose()
