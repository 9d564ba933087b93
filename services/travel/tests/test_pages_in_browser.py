"""Travel's member pages in a real browser (Debian's Chromium via Playwright), in Japanese and
English, at 375 and 1280 px, with the real points service behind the earn badges: nothing is wider
than the screen, and no word or price of the hotel's rate table is broken across lines. Screenshots
are written under the test's tmp dir for people to look at."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .travel_support import TravelEnv, days_ahead

pytestmark = pytest.mark.long(75)

if TYPE_CHECKING:
    from playwright._impl._api_structures import SetCookieParam

WIDTHS = (375, 1280)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
# The longest stay (seven prices per row) at the hotel with the longest names.
HOTEL = "htl_kyoto_arashiyama_onsen"
STAY = f"check_in={days_ahead(3).isoformat()}&check_out={days_ahead(10).isoformat()}&guests=2"

PAGE_WIDTH = "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
# Elements that reach past the right edge of the screen (the visually hidden table head aside).
TOO_WIDE = """() => Array.from(document.querySelectorAll('body *'))
  .filter(e => !e.closest('thead, .visually-hidden'))
  .map(e => [e, e.getBoundingClientRect()])
  .filter(([e, r]) => r.width > 0 && r.right > window.innerWidth + 0.5)
  .map(([e, r]) => `${e.tagName.toLowerCase()}.${e.className} ${Math.round(r.right)}px`)"""
# Words and prices of the rate table whose letters sit on more than one line.
BROKEN_WORDS = r"""() => {
  const table = document.querySelector('.travel-rates');
  if (!table) return ['(no rate table)'];
  const broken = [];
  const walker = document.createTreeWalker(table, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest('thead')) continue;
    for (const m of node.data.matchAll(/[A-Za-z0-9¥%.,:'()\-]{2,}/g)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const lines = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (lines.size > 1) broken.push(m[0]);
    }
  }
  return broken;
}"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("lang", ["ja", "en"])
async def test_member_pages_fit_a_phone_and_the_rate_table_keeps_words_whole(
    travel: TravelEnv, lang: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    member = await travel.member(points=0)
    saver = await travel.book(member, plan="saver", key="saver")
    base = str(travel.http.base_url).rstrip("/")
    async with await travel.signed_in_browser(member) as signed_in:
        cookies: list[SetCookieParam] = [
            {"name": c.name, "value": c.value or "", "url": base} for c in signed_in.cookies.jar
        ]
    cookies.append({"name": "kz_lang", "value": lang, "url": base})
    pages = [
        f"/search?city=kyoto&{STAY}",
        f"/hotels/{HOTEL}?{STAY}",
        f"/hotels/{HOTEL}",
        "/trips",
        f"/trips/{saver['booking_id']}",
    ]
    problems: dict[str, Any] = {}
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            for width in WIDTHS:
                context = await browser.new_context(viewport={"width": width, "height": 900})
                await context.add_cookies(cookies)
                page = await context.new_page()
                for path in pages:
                    response = await page.goto(base + path)
                    assert response is not None and response.status == 200, (path, response and response.status)
                    await page.wait_for_load_state("networkidle")
                    name = f"{lang}-{width}-{path.strip('/').split('?')[0].replace('/', '_')}{'-stay' * ('?' in path)}"
                    await page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
                    if await page.evaluate(PAGE_WIDTH) > width:
                        problems[f"{name} wider than {width}"] = await page.evaluate(TOO_WIDE)
                    if path.startswith("/hotels/") and "?" in path:
                        assert await page.locator("[data-earn]").count() == 9, "an earn badge beside every offer"
                        if broken := await page.evaluate(BROKEN_WORDS):
                            problems[f"{name} words broken"] = broken
                    if path.startswith("/search"):
                        assert await page.locator("[data-earn]").count() == 3, "an earn badge on every hotel card"
                await context.close()
        finally:
            await browser.close()
    print(f"screenshots: {tmp_path}")
    assert problems == {}
