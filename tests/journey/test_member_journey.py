"""What a member experiences, in a real browser across the real ecosystem (`make up`'s stack).

One test walks the whole journey, step by step; a failing step saves screenshots under
test-artifacts/journey/.
"""

from __future__ import annotations

import re
import uuid

from journey_support import Ecosystem, Steps
from playwright.sync_api import Page, expect

PASSWORD = "correct horse battery"


def header_points(page: Page) -> int:
    slot = page.locator("[data-kz-points]")
    expect(slot).to_have_text(re.compile(r"^[\d,]+ pt$"))
    return int(slot.inner_text().removesuffix(" pt").replace(",", ""))


def test_one_member_across_the_ecosystem(ecosystem: Ecosystem, browser, steps: Steps) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    steps.pages.append(page)
    email = f"aiko.{uuid.uuid4().hex[:8]}@example.com"

    with steps.step("register at identity"):
        page.goto(ecosystem.url("identity", "/signup"))
        page.get_by_label("Email").fill(email)
        page.get_by_label("Display name").fill("Aiko Tanaka")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Create account").click()
        expect(page.get_by_text("Aiko Tanaka").first).to_be_visible()

    with steps.step("single sign-on into fintech and apply for a card"):
        page.goto(ecosystem.url("fintech", "/card"))
        expect(page).to_have_url(re.compile(re.escape(ecosystem.url("fintech"))))
        expect(page.locator("[data-kz-member-name]")).to_have_text("Aiko Tanaka")
        assert header_points(page) == 0
        page.get_by_label("Annual income (¥)").fill("6000000")
        page.get_by_role("button", name="Apply for a card").click()
        expect(page.get_by_text(re.compile("limit", re.I)).first).to_be_visible()

    with steps.step("the other services know the member without a password"):
        for service in ("points", "shop", "travel"):
            page.goto(ecosystem.url(service))
            expect(page.locator("[data-kz-member-name]")).to_have_text("Aiko Tanaka")

    context.close()
