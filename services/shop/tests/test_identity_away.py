"""With identity out of reach, the shop cannot get the service token its calls to points and fintech
carry: a checkout fails with a plain "unavailable" answer and leaves nothing held, and the pages
still render (without earn badges) instead of failing."""

from __future__ import annotations

import re

import pytest
from kizuna.kit.testing import form_fields

from .shop_peers import PaymentsPeer, PointsPeer
from .shop_support import ShopApi

OWNER = "mbr_owner"
BUYER = "mbr_buyer"


# Members' tokens still verify (the keys are the issuer's), but the token endpoint is a port nothing
# listens on (1): identity is down for the shop's own tokens.
@pytest.mark.parametrize("shop_overrides", [{"kizuna_token_url": "http://127.0.0.1:1/token"}])
async def test_without_identity_a_checkout_is_refused_as_unavailable_and_pages_still_render(
    api: ShopApi, points_peer: PointsPeer, payments_peer: PaymentsPeer
) -> None:
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
        fields = form_fields(checkout.text, "/checkout")
        placed = await browser.post("/checkout", data={**fields, "points": 100}, follow_redirects=True)
        assert placed.status_code == 200, placed.text
        assert "Part of Kizuna is not answering right now. Please try again in a moment." in placed.text
        assert "service token" not in placed.text and "ConnectError" not in placed.text
    assert await api.stock(product) == 5
    assert points_peer.calls == [] and payments_peer.calls == []
