"""Every page of every service in a real browser (Debian's Chromium via Playwright) over `make up`'s
stack, in Japanese and English, at 1280 and 375 px: no page is wider than the screen, axe-core finds
no serious or critical accessibility violation, and a screenshot of each page is written for people
to look at (not compared pixel by pixel) under the test's tmp dir, or KIZUNA_SCREENSHOTS when set.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.journey.journey_support import Ecosystem, browser, ecosystem  # noqa: F401  (fixtures)

pytestmark = pytest.mark.long(240)

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = (1280, 375)
LANGUAGES = ("ja", "en")
PASSWORD = "correct horse battery"

AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations
    .filter(v => v.impact === 'serious' || v.impact === 'critical')
    .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
}"""
WIDTH = "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"


def _settle(page: Any, url: str) -> None:
    """Open a page and let its silent single-sign-on check (a redirect through identity) finish."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        page.goto(url)
    except PlaywrightError as exc:
        if "ERR_ABORTED" not in str(exc):
            raise
    page.wait_for_load_state("networkidle")


def _pages(eco: Ecosystem, product: str, hotel: str, stay: str) -> list[tuple[str, str]]:
    return [
        ("identity", "/"),
        ("identity", "/account"),
        ("points", "/wallet"),
        ("shop", "/"),
        ("shop", "/search?q=tea"),
        ("shop", f"/products/{product}"),
        ("shop", "/cart"),
        ("shop", "/orders"),
        ("shop", "/merchant"),
        ("travel", "/"),
        ("travel", f"/search?city=kyoto&{stay}"),
        ("travel", f"/hotels/{hotel}?{stay}"),
        ("travel", "/trips"),
        ("fintech", "/card"),
        ("fintech", "/bank"),
        ("fintech", "/invest"),
        *[(name, path) for name in eco.urls if name == "partner" for path in ("/", "/card", "/purchases")],
    ]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("KIZUNA_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_page_fits_a_phone_and_passes_axe(
    ecosystem: Ecosystem,  # noqa: F811
    browser: Any,  # noqa: F811
    screenshots: Path,
    lang: str,
) -> None:
    assert AXE.exists(), "axe-core is missing: run npm install"
    # bypass_csp: axe is injected as an inline script, which the pages' CSP (rightly) refuses.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale=lang, bypass_csp=True)
    context.set_extra_http_headers({"Accept-Language": f"{lang},en;q=0.5" if lang == "ja" else "en"})
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        # A new member: sign up at identity, get a card, put something in the cart, order it.
        page.goto(ecosystem.url("identity", "/signup"))
        page.locator("input[name=email]").fill(f"ui.{lang}.{uuid.uuid4().hex[:8]}@example.com")
        page.locator("input[name=display_name]").fill("Aiko Tanaka")
        page.locator("input[name=password]").fill(PASSWORD)
        page.locator("form[action^='/signup'] button[type=submit]").click()
        page.wait_for_load_state("networkidle")

        _settle(page, ecosystem.url("fintech", "/card"))
        page.locator("input[name=annual_income_minor]").fill("6000000")
        page.locator("form[action='/card/apply'] button").click()
        page.wait_for_load_state("networkidle")

        _settle(page, ecosystem.url("shop", "/?q=tea"))
        product_href = page.locator("a.kz-tile-title").first.get_attribute("href")
        assert product_href and product_href.startswith("/products/")
        product = product_href.rsplit("/", 1)[1]
        _settle(page, ecosystem.url("shop", product_href))
        page.locator("form[action='/cart/items'] button[type=submit]").click()
        page.wait_for_load_state("networkidle")
        assert page.locator("[data-flash=success]").count() == 1  # the message of the form, once
        checkout = page.locator("a[href^='/checkout']").first.get_attribute("href")
        assert checkout
        _settle(page, ecosystem.url("shop", checkout))
        _check(page, screenshots, f"{lang}-1280-shop-checkout", 1280)
        page.set_viewport_size({"width": 375, "height": 800})
        _check(page, screenshots, f"{lang}-375-shop-checkout", 375)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.locator("form[method=post][action='/checkout'] button[type=submit]").click()
        page.wait_for_load_state("networkidle")

        _settle(page, ecosystem.url("travel", "/"))
        check_in = page.locator("input[name=check_in]").input_value()
        check_out = page.locator("input[name=check_out]").input_value()
        stay = f"check_in={check_in}&check_out={check_out}&guests=2"
        _settle(page, ecosystem.url("travel", f"/search?city=kyoto&{stay}"))
        hotel_href = page.locator("article.hotel-result a").first.get_attribute("href")
        assert hotel_href
        hotel = hotel_href.split("?")[0].rsplit("/", 1)[1]

        problems: dict[str, Any] = {}
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900 if width > 400 else 800})
            for service, path in _pages(ecosystem, product, hotel, stay):
                _settle(page, ecosystem.url(service, path))
                slug = re.sub(r"[^a-z0-9]+", "-", f"{service}{path.split('?')[0]}".lower()).strip("-")
                found = _check(page, screenshots, f"{lang}-{width}-{slug}", width)
                shown_in = page.evaluate("document.documentElement.lang")
                if shown_in != lang:
                    found["language"] = shown_in
                if found:
                    problems[f"{width}px {service}{path}"] = found
        assert not problems, json.dumps(problems, indent=1, ensure_ascii=False)
    finally:
        context.close()


def _check(page: Any, folder: Path, name: str, width: int) -> dict[str, Any]:
    """Screenshot the page; return what is wrong with it (wider than the screen, axe violations)."""
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    found: dict[str, Any] = {}
    scroll_width = page.evaluate(WIDTH)
    if scroll_width > width:
        found["width"] = scroll_width
    header = page.locator("header.kz-header")
    if header.count() and width <= 400:
        # The header stays on one line on phones.
        height = header.evaluate("el => el.getBoundingClientRect().height")
        if height > 60:
            found["header_height"] = height
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate(AXE_RUN)
    if violations:
        found["axe"] = violations
    return found
