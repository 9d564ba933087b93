"""What a member experiences, in a real browser across the real ecosystem (`make up`'s stack).

One test walks the whole journey, step by step; a failing step saves screenshots and HTML under
test-artifacts/journey/.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable

import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import Error as PlaywrightError

from .journey_support import DECLARATIONS, Ecosystem, Steps

pytestmark = pytest.mark.long(80)

PASSWORD = "correct horse battery"


def header_points(page: Page) -> int:
    slot = page.locator("[data-kz-points]")
    expect(slot).to_have_text(re.compile(r"^[\d,]+ pt$"))
    return int(slot.inner_text().removesuffix(" pt").replace(",", ""))


def wait_for_points(page: Page, url: str, predicate: Callable[[int], bool], timeout: float = 60) -> int:
    """Reload `url` until the header's live balance satisfies `predicate` (events take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        points = header_points(page)
        if predicate(points) or time.monotonic() > deadline:
            return points
        time.sleep(1)


def wallet_shows_spend(page: Page, wallet_url: str, service: str | re.Pattern[str], points: int) -> None:
    """The points wallet lists the spend, and its total is exactly what the header shows."""
    page.goto(wallet_url)
    # The wallet names the service by its declared label ("Travel", "Card"), whatever its case here.
    name = service if isinstance(service, re.Pattern) else re.compile(f"^{re.escape(service)}$")
    row = (
        page.locator("tr")
        .filter(has=page.get_by_role("cell", name=re.compile(name.pattern, re.IGNORECASE)))
        .filter(has=page.get_by_role("cell", name=f"-{points}", exact=True))
    )
    expect(row.first).to_be_visible()
    total = int(page.get_by_test_id("total").inner_text().removesuffix(" pt").replace(",", ""))
    assert header_points(page) == total


def visit(page: Page, url: str) -> None:
    """Open a page and let its silent single-sign-on check (a redirect through identity) finish."""
    try:
        page.goto(url)
    except PlaywrightError as exc:
        if "ERR_ABORTED" not in str(exc):  # the page's own redirect replaced the navigation
            raise
    page.wait_for_load_state("networkidle")


def ledger_balance(ecosystem: Ecosystem, member_id: str) -> int:
    """The member's spendable points summed from the ledger's postings (not from the wallet row)."""
    with sqlite3.connect(ecosystem.data_dir / "points.db") as db:
        (available,) = db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM points_posting WHERE account = ?", (f"member:{member_id}:available",)
        ).fetchone()
    return int(available)


LAYOUT_CHECK = """() => {
  const controls = [...document.querySelectorAll('input, select, textarea')]
    .filter(el => !['hidden', 'submit', 'button'].includes(el.type) && el.offsetParent !== null);
  const unlabeled = controls
    .filter(el => !(el.labels && el.labels.length))
    .filter(el => !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
    .map(el => el.name || el.id || el.outerHTML.slice(0, 80));
  return {
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    unlabeled,
    links: [...document.querySelectorAll('nav.kz-services a')].map(a => a.textContent.trim()),
  };
}"""


def sign_in(page: Page, email: str, password: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


# The whole journey, stack start included, runs well past the suite's default per-test limit on a
# loaded 2-core machine.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_member_across_the_ecosystem(ecosystem: Ecosystem, browser: Browser, steps: Steps) -> None:
    member_ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = member_ctx.new_page()
    page.set_default_timeout(20_000)
    steps.pages.append(page)
    email = f"aiko.{uuid.uuid4().hex[:8]}@example.com"
    demo = json.loads((ecosystem.data_dir / "demo-members.json").read_text())

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
        # The demo's welcome campaign gives every new member 300 limited-time points.
        welcome = wait_for_points(page, ecosystem.url("fintech", "/card"), lambda p: p == 300)
        assert welcome == 300, welcome
        page.get_by_label("Annual income (¥)").fill("6000000")
        page.get_by_role("button", name="Apply for a card").click()
        expect(page.get_by_text("Credit limit")).to_be_visible()

    with steps.step("every service knows the member without a password"):
        for service in (d.name for d in DECLARATIONS if d.sign_in is not None and d.name != "fintech"):
            visit(page, ecosystem.url(service))
            expect(page.locator("[data-kz-member-name]")).to_have_text("Aiko Tanaka")

    with steps.step("keyboard users get a skip link first and a visible focus"):
        page.goto(ecosystem.url("shop"))
        page.keyboard.press("Tab")
        skip = page.get_by_role("link", name="Skip to content")
        expect(skip).to_be_focused()
        expect(skip).to_be_in_viewport()

    with steps.step("on a phone every page fits, every field has a label, the header links every service"):
        page.set_viewport_size({"width": 375, "height": 740})
        for service, path in (
            ("identity", "/account"),
            ("points", "/wallet"),
            ("shop", "/"),
            ("travel", "/"),
            ("fintech", "/card"),
        ):
            visit(page, ecosystem.url(service, path))
            layout = page.evaluate(LAYOUT_CHECK)
            assert layout["overflow"] <= 0, (service, f"{layout['overflow']} px wider than the screen")
            assert layout["unlabeled"] == [], (service, layout["unlabeled"])
            # The header links every declared service, under the label its declaration gives.
            assert sorted(layout["links"]) == sorted(d.label for d in DECLARATIONS), (service, layout["links"])
        page.set_viewport_size({"width": 1200, "height": 900})

    with steps.step("shop checkout paid by card"):
        page.goto(ecosystem.url("shop", "/?q=teapot"))
        page.get_by_role("link", name=re.compile("Tokoname kyusu teapot")).click()
        page.get_by_role("button", name="Add to cart").click()
        page.goto(ecosystem.url("shop", "/cart"))
        page.get_by_role("link", name=re.compile("Check ?out", re.I)).first.click()
        # What the checkout promises (points' earn preview on the card's part, plus any campaign).
        promised = int(page.locator("[data-payment] [data-earn]").get_attribute("data-earn") or 0)
        assert promised > 0
        page.get_by_role("button", name=re.compile("Place order")).click()
        expect(page.locator("[data-status]").first).to_have_text(re.compile("paid", re.I))

    with steps.step("the wallet shows the promised points as being earned, right away"):
        page.goto(ecosystem.url("points", "/wallet"))
        being_earned = page.locator("tr[data-testid=being-earned][data-service=shop]")
        expect(being_earned.first).to_have_attribute("data-amount", str(promised))

    with steps.step("the merchant ships the order"):
        merchant_ctx = browser.new_context()
        merchant = merchant_ctx.new_page()
        merchant.set_default_timeout(20_000)
        steps.pages.append(merchant)
        merchant.goto(ecosystem.url("shop", "/merchant"))
        sign_in(merchant, demo["merchant"]["email"], demo["merchant"]["password"])
        expect(merchant.get_by_role("heading", name="Merchant console")).to_be_visible()
        merchant.get_by_role("button", name="Ship").first.click()
        expect(merchant.get_by_role("button", name="Ship")).to_have_count(0)
        merchant_ctx.close()

    with steps.step("the member confirms delivery and the points appear in the header"):
        page.goto(ecosystem.url("shop", "/orders"))
        page.get_by_role("button", name="Confirm delivery").first.click()
        expect(page.locator("[data-status]").first).to_have_text(re.compile("completed", re.I))
        # The shop's promise, exactly, plus 1% back from the card purchase itself (¥6,800).
        earned = wait_for_points(page, ecosystem.url("shop", "/orders"), lambda p: p >= 300 + promised + 68)
        assert earned >= 300 + promised + 68, earned
        page.goto(ecosystem.url("points", "/wallet"))
        expect(page.locator("tr[data-testid=being-earned][data-service=shop]")).to_have_count(0)
        # The base earning and the campaign bonus are separate lines; together, exactly the promise.
        posted = page.locator("tr[data-testid=posted][data-service=shop]").evaluate_all(
            "rows => rows.map(r => Number(r.dataset.amount))"
        )
        assert sum(a for a in posted if a > 0) == promised, (posted, promised)

    with steps.step("book a hotel paying partly with points"):
        page.goto(ecosystem.url("travel"))
        page.get_by_role("button", name="Search").click()
        page.locator("article.hotel-result h2 a").first.click()
        page.get_by_role("button", name="Book").first.click()
        page.get_by_label(re.compile("Points to use")).fill("40")
        page.get_by_role("button", name="Pay and book").click()
        expect(page.get_by_text(re.compile("confirmed", re.I)).first).to_be_visible()
        wallet_shows_spend(page, ecosystem.url("points", "/wallet"), "travel", 40)

    with steps.step("pay the card bill partly with points"):
        page.goto(ecosystem.url("fintech", "/bank"))
        page.get_by_label("Test top-up (¥)").fill("500000")
        page.get_by_role("button", name="Top up").click()
        page.goto(ecosystem.url("fintech", "/card"))
        page.get_by_role("button", name="Close my statement now (sandbox)").click()
        statement = page.locator("section").filter(has=page.get_by_role("button", name=re.compile("^Pay")))
        due = int(statement.get_by_label("From bank (¥)").input_value())
        statement.get_by_label("With points").fill("50")
        statement.get_by_label("From bank (¥)").fill(str(due - 50))
        statement.get_by_role("button", name=re.compile("^Pay")).click()
        expect(page.get_by_text(re.compile(r"\(paid\)"))).to_be_visible()
        wallet_shows_spend(page, ecosystem.url("points", "/wallet"), "card", 50)

    with steps.step("invest points in a fund"):
        page.goto(ecosystem.url("fintech", "/invest"))
        fund = page.locator("form").filter(has=page.get_by_role("button", name="Buy")).first
        fund.get_by_label("Points").fill("30")
        fund.get_by_label("Bank (¥)").fill("1000")
        fund.get_by_role("button", name="Buy").click()
        expect(page.get_by_role("heading", name=re.compile("Holdings · ¥[1-9]"))).to_be_visible()
        wallet_shows_spend(page, ecosystem.url("points", "/wallet"), re.compile("card|invest|fintech"), 30)

    with steps.step("download my data: one archive with every service's part"):
        page.goto(ecosystem.url("identity", "/account"))
        if "signin" in page.url:
            sign_in(page, email, PASSWORD)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download my data").click()
        archive = zipfile.ZipFile(io.BytesIO(download.value.path().read_bytes()))
        manifest = json.loads(archive.read("manifest.json"))
        member_id = manifest["member_id"]
        assert member_id.startswith("mbr_"), manifest
        assert {name: part["status"] for name, part in manifest["services"].items()} == {
            name: "included" for name in ["identity", *(d.name for d in DECLARATIONS if d.privacy)]
        }, manifest
        parts = {name: archive.read(f"{name}.json").decode() for name in manifest["services"]}
        assert email in parts["identity"]
        # What the member did in each service is in that service's part.
        assert "Tokoname kyusu teapot" in parts["shop"]
        assert re.search(r"confirmed|completed", parts["travel"], re.I)
        assert re.search(r'"last4"', parts["fintech"])
        assert member_id in parts["points"]

    with steps.step("every service's header shows the balance the ledger holds"):
        ledger = ledger_balance(ecosystem, member_id)
        assert ledger > 0
        for service, path in (
            ("identity", "/account"),
            ("points", "/"),
            ("shop", "/"),
            ("travel", "/"),
            ("fintech", "/"),
        ):
            page.goto(ecosystem.url(service, path))
            assert header_points(page) == ledger, service

    with steps.step("sign out once, signed out everywhere"):
        page.goto(ecosystem.url("shop"))
        page.locator("[data-kz-signout]").click()
        page.get_by_role("button", name="Sign out").click()
        for service in (d.name for d in DECLARATIONS if d.sign_in is not None):
            visit(page, ecosystem.url(service, "/"))
            expect(page.locator("[data-kz-member-name]")).to_have_text("")
        page.goto(ecosystem.url("fintech", "/card"))
        expect(page).to_have_url(re.compile(re.escape(ecosystem.url("identity"))))

    with steps.step("delete the account and watch every service confirm"):
        page.goto(ecosystem.url("identity", "/account"))
        if "signin" in page.url:
            sign_in(page, email, PASSWORD)
        page.get_by_label("Current password").last.fill(PASSWORD)
        page.get_by_label("I understand my account and data will be deleted").check()
        page.get_by_role("button", name="Delete my account").click()
        expect(
            page.get_by_role("heading", name=re.compile("Deleting your account|Your account is deleted"))
        ).to_be_visible()
        for service in (d.name for d in DECLARATIONS if d.privacy):
            row = page.locator(f'tr[data-service="{service}"]')
            expect(row).to_have_attribute("data-done", "yes", timeout=90_000)
        expect(page.get_by_role("heading", name="Your account is deleted")).to_be_visible()

    member_ctx.close()
    _points_audit_passes(ecosystem)


def _points_audit_passes(ecosystem: Ecosystem) -> None:
    """After the journey the ledger's invariants hold (points' own audit, run as operators do)."""
    # The ecosystem ran on SQLite under its data dir: audit that ledger, whatever this shell says.
    env = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "KIZUNA_DATA_DIR": str(ecosystem.data_dir),
        "NATS_URL": "nats://127.0.0.1:1",
        "KIZUNA_ISSUER": ecosystem.url("identity").rstrip("/"),
        "LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [sys.executable, "-m", "points", "audit"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r'"entries": [1-9]', result.stdout), f"the audit saw no journal entries:\n{result.stdout}"
