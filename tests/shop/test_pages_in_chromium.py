"""The shop's member pages with points in a real browser (Debian's Chromium via Playwright): the
storefront's earn badges, the product page, the cart, the checkout's points / card breakdown and the
orders page, in English and Japanese, at 375 and 1280 px. Nothing is wider than the screen. Each
page's screenshot is written under the test's tmp dir for people to look at."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .shop_world import ShopWorld
from .test_pages import OWNER, _browser, _csrf, _post

if TYPE_CHECKING:
    from playwright._impl._api_structures import SetCookieParam

WIDTH = "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_member_pages_with_points_fit_a_phone_and_a_desktop(world: ShopWorld, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    w = world
    buyer = await w.member(points=1_200)
    merchant = await w.api.active_merchant(OWNER, name="Kumo Outdoor")
    products = [
        await w.api.product(merchant, OWNER, title=title, price=price, category="outdoor")
        for title, price in [("Ultralight down jacket", 19_800), ("Titanium camping mug 450 ml", 3_900)]
    ]
    async with await _browser(w, buyer) as member:
        csrf = _csrf((await member.get(f"/products/{products[0]}")).text)
        await _post(member, "/cart/items", {"product_id": products[0], "quantity": 1}, csrf)
        await _post(member, "/cart/items", {"product_id": products[1], "quantity": 2}, csrf)
        held = await _post(
            member, "/checkout", {"merchant_id": merchant, "points": 500, "idempotency_key": uuid.uuid4().hex}, csrf
        )
        assert re.search(r'data-points-state="held"', held.text)
        await _post(member, "/cart/items", {"product_id": products[1], "quantity": 1}, csrf)
        cookies: list[SetCookieParam] = [
            {"name": c.name, "value": c.value or "", "url": str(w.api.http.base_url)} for c in member.cookies.jar
        ]
    pages = [
        "/",
        f"/products/{products[0]}",
        "/cart",
        f"/checkout?merchant_id={merchant}&points=700",
        "/orders",
    ]
    too_wide: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        try:
            for lang in ("en", "ja"):
                context = await browser.new_context(locale=lang, extra_http_headers={"Accept-Language": lang})
                await context.add_cookies(cookies)
                page = await context.new_page()
                for width in (375, 1280):
                    await page.set_viewport_size({"width": width, "height": 800 if width < 400 else 900})
                    for path in pages:
                        response = await page.goto(str(w.api.http.base_url).rstrip("/") + path)
                        assert response is not None and response.status == 200, path
                        if path == "/":
                            assert await page.locator("[data-earn]").count() == 2, "the tiles show no earn badges"
                        if path.startswith("/checkout"):
                            assert await page.locator("[data-pay-card]").get_attribute("data-pay-card") == "3200"
                        shown = await page.evaluate(WIDTH)
                        if shown > width:
                            too_wide.append(f"{lang} {width}px {path}: {shown}px")
                        name = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "storefront"
                        await page.screenshot(path=str(tmp_path / f"{lang}-{width}-{name[:40]}.png"), full_page=True)
                await context.close()
        finally:
            await browser.close()
    print(f"screenshots: {tmp_path}")
    assert too_wide == []
