"""The storefront's and product page's "earn N pt" badges come from points' earn preview: asked at
once for the distinct prices on a page, remembered, and left out while points does not answer (the
page itself never waits on points or fails because of it)."""

from __future__ import annotations

import re

import httpx

from .shop_peers import PointsPeer
from .shop_support import ShopApi

OWNER = "mbr_owner"
BUYER = "mbr_buyer"
PRICES = (1000, 1000, 2500, 3900, 5400, 12800)


def _badges(page: httpx.Response) -> list[int]:
    assert page.status_code == 200, page.text
    return sorted(int(n) for n in re.findall(r'data-earn="(\d+)"', page.text))


async def _shelf(api: ShopApi) -> list[str]:
    merchant = await api.active_merchant(OWNER)
    return [await api.product(merchant, OWNER, price=p, title=f"Item {i}") for i, p in enumerate(PRICES)]


async def test_a_storefront_asks_points_once_per_distinct_price_all_at_once_and_remembers(
    api: ShopApi, points_peer: PointsPeer
) -> None:
    products = await _shelf(api)
    points_peer.preview_delay = 0.3
    async with await api.browser(BUYER) as browser:
        assert _badges(await browser.get("/")) == sorted(p // 100 for p in PRICES)  # the peer earns 1%
        # Five distinct prices: five questions, asked together rather than one after another.
        assert points_peer.calls.count("PreviewEarn") == 5
        assert points_peer.most_previews_at_once > 1
        # The next page view, and a product page at a price already asked, ask nothing new.
        assert _badges(await browser.get("/", params={"sort": "price_asc"})) == sorted(p // 100 for p in PRICES)
        assert _badges(await browser.get(f"/products/{products[3]}")) == [39]
        assert points_peer.calls.count("PreviewEarn") == 5
    # Anonymous visitors (no cookies at all) get the storefront, without member badges.
    async with httpx.AsyncClient(base_url=str(api.http.base_url)) as anonymous:
        page = await anonymous.get("/")
        assert _badges(page) == [] and "Item 5" in page.text
    assert points_peer.calls.count("PreviewEarn") == 5


async def test_pages_show_no_badge_while_points_is_away_and_stop_asking_for_a_while(
    api: ShopApi, points_peer: PointsPeer
) -> None:
    products = await _shelf(api)
    points_peer.down = {"PreviewEarn"}
    async with await api.browser(BUYER) as browser:
        page = await browser.get("/")
        assert _badges(page) == [] and "Item 0" in page.text
        asked = points_peer.calls.count("PreviewEarn")
        assert asked >= 1
        # Points is back, but the pages leave it alone for a while rather than wait on it again.
        points_peer.down = set()
        product = await browser.get(f"/products/{products[0]}")
        assert _badges(product) == [] and "Item 0" in product.text
        assert points_peer.calls.count("PreviewEarn") == asked
