"""With identity out of reach, the shop cannot get the service token its calls to points and fintech
carry: a checkout fails with a plain "unavailable" answer and leaves nothing held, and the pages
still render (without earn badges) instead of failing."""

from __future__ import annotations

import re

from kizuna.kit.testing import TestIssuer

from .shop_peers import PaymentsPeer, PointsPeer, serve_payments, serve_points
from .shop_support import reset_streams, running_shop, shop_api

OWNER = "mbr_owner"
BUYER = "mbr_buyer"


async def test_without_identity_a_checkout_is_refused_as_unavailable_and_pages_still_render(
    nats_url: str, database_url: str, test_issuer: TestIssuer, points_peer: PointsPeer, payments_peer: PaymentsPeer
) -> None:
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
                # Members' tokens still verify (the keys are the issuer's), but the token endpoint
                # is a port nothing listens on (1): identity is down for the shop's own tokens.
                kizuna_token_url="http://127.0.0.1:1/token",
            ) as runtime,
            shop_api(runtime, test_issuer) as api,
        ):
            merchant = await api.active_merchant(OWNER)
            product = await api.product(merchant, OWNER, price=1000, stock=5)
            await api.ok("PUT", "/api/cart/items", BUYER, {"product_id": product, "quantity": 1})

            answer = await api.checkout(BUYER, points=100)
            assert answer.status_code == 503, answer.text
            assert "identity cannot be reached for a service token" in answer.json()["message"]
            assert await api.stock(product) == 5
            assert points_peer.calls == [] and payments_peer.calls == []

            async with await api.browser(BUYER) as browser:
                for path in ("/", f"/products/{product}"):
                    page = await browser.get(path)
                    assert page.status_code == 200, page.text
                    assert "Green tea" in page.text and re.findall(r'data-earn="(\d+)"', page.text) == []
                # The checkout page, and placing the order from it: the member reads plain words.
                checkout = await browser.get("/checkout", params={"merchant_id": merchant})
                assert checkout.status_code == 200, checkout.text
                fields = dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', checkout.text))
                assert {"csrf_token", "idempotency_key", "merchant_id"} <= fields.keys(), checkout.text
                placed = await browser.post("/checkout", data={**fields, "points": 100}, follow_redirects=True)
                assert placed.status_code == 200, placed.text
                assert "Part of Kizuna is not answering right now. Please try again in a moment." in placed.text
                assert "service token" not in placed.text and "ConnectError" not in placed.text
            assert await api.stock(product) == 5
            assert points_peer.calls == [] and payments_peer.calls == []
    finally:
        await points_server.stop(0)
        await payments_server.stop(0)
