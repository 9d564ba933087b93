"""The card, bank and invest pages of a member who uses them all, in a real browser (Chromium via
Playwright), in English and Japanese at 1280 and 375 px: nothing is wider than the screen, the
Japanese pages show no English, and every statement, card and bank line reads in plain words
(no internal ids, no developer wording)."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kizuna.kit.i18n import COOKIE as LANGUAGE_COOKIE

from .fintech_world import FintechClient, new_member, signed_in_browser

PAGES = ("/card", "/bank", "/invest")
WIDTHS = (1280, 375)
# The widest element's right edge, and what it is, so a failure names the culprit.
WIDEST = """() => {
  let widest = {right: 0, what: ''};
  for (const el of document.querySelectorAll('body *')) {
    const right = el.getBoundingClientRect().right;
    if (right > widest.right) widest = {right, what: el.tagName.toLowerCase() + '.' + el.className};
  }
  return {scroll: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth), ...widest};
}"""
# Latin words that read alike in Japanese: the brand, points, the time zone, "ID"; and merchants'
# names, shown as each merchant gives its own (here the name the test's shop gives).
BRAND = re.compile(r"(?<![A-Za-z])(?:Kizuna Shop|Kizuna|pt|UTC|ID)(?![A-Za-z])")
ID = re.compile(r"\b(?:mbr|card|auth|pur|ref|stm|pay|ent|kzn)[_-][0-9A-Za-z_-]{4,}\b")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # The pages read the same on both databases; one is enough for a browser.
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            await browser.close()


async def _member_with_everything(fintech: FintechClient) -> tuple[str, str]:
    """A member with a card (purchases, a refund, a closed and part-paid statement, a line after
    it), a bank account (top-up, money sent and received, the bill) and funds bought and sold."""
    member, friend = new_member(), new_member()
    headers = fintech.member_headers(member)
    await fintech.apply_card(member)
    await fintech.open_bank(member, top_up=200_000)
    await fintech.open_bank(friend, top_up=50_000)
    for amount, merchant in ((12_800, "Kizuna Shop"), (35_000, "Kizuna Travel")):
        auth = await fintech.authorize(member, amount, merchant=merchant.lower().replace(" ", "-"))
        captured = await fintech.capture(auth.authorization_id)
    from kizuna.fintech.v1 import fintech_pb2

    await fintech.payments.Refund(
        fintech_pb2.RefundRequest(capture_id=captured.capture_id, idempotency_key=uuid.uuid4().hex),
        metadata=fintech.pay_metadata(None),
        timeout=10,
    )
    closed = await fintech.http.post("/api/card/statements/close-now", headers=headers)
    assert closed.status_code == 200, closed.text
    paid = await fintech.http.post(
        f"/api/card/statements/{closed.json()['statement_id']}/pay",
        json={"bank_minor": 5_000, "points": 0, "idempotency_key": uuid.uuid4().hex},
        headers=headers,
    )
    assert paid.status_code == 200, paid.text
    auth = await fintech.authorize(member, 2_400, merchant="kizuna-shop")
    await fintech.capture(auth.authorization_id)
    for sender, receiver, amount in ((member, friend, 3_000), (friend, member, 1_500)):
        sent = await fintech.http.post(
            "/api/bank/transfers",
            json={"to_member_id": receiver, "amount_minor": amount, "idempotency_key": uuid.uuid4().hex},
            headers=fintech.member_headers(sender),
        )
        assert sent.status_code == 200, sent.text
    bought = await fintech.http.post(
        "/api/funds/kzn-world-equity/buy",
        json={"bank_minor": 30_000, "points": 0, "idempotency_key": uuid.uuid4().hex},
        headers=headers,
    )
    assert bought.status_code == 200, bought.text
    sold = await fintech.http.post(
        "/api/funds/kzn-world-equity/sell",
        json={"units_micro": 200_000, "idempotency_key": uuid.uuid4().hex},
        headers=headers,
    )
    assert sold.status_code == 200, sold.text
    return member, friend


def _english_in(text: str) -> list[str]:
    """Lines of a Japanese page that still hold English words."""
    return [line for line in text.splitlines() if re.search(r"[A-Za-z]{2,}", ID.sub("", BRAND.sub("", line)))]


async def _pay_button_names_only_what_is_paid(page: Any, lang: str) -> list[str]:
    """The bill's pay button names the bank part, the points part, or both, never "0 pt" or "¥0"."""
    form = page.locator("form[data-kz-pay]")
    button, points = form.locator("[data-kz-pay-label]"), form.locator("input[data-kz-points]")
    due = int(await form.get_attribute("data-kz-pay"))
    seen = []
    for entered in (0, due // 2, due):
        await points.fill(str(entered))
        seen.append(await button.inner_text())
    expected = {
        "en": ["Pay ¥7,800 from the bank", "Pay ¥3,900 from the bank and 3,900 pt", "Pay with 7,800 pt"],
        "ja": ["銀行口座から¥7,800を支払う", "銀行口座から¥3,900、3,900 ptで支払う", "7,800 ptで支払う"],
    }[lang]
    return [] if seen == expected else [f"{lang} /card pay button reads {seen}, not {expected}"]


async def _look(page: Any, lang: str, name: str, shots: Path) -> list[str]:
    """What is wrong with the page shown now, at each width: too wide, internal ids, English in Japanese."""
    problems: list[str] = []
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        await page.screenshot(path=str(shots / f"{lang}-{width}-{name}.png"), full_page=True)
        size = await page.evaluate(WIDEST)
        if size["scroll"] > width:
            problems.append(f"{lang} {name} at {width}px is {size['scroll']}px wide ({size['what']})")
    text = await page.inner_text("main")
    if ID.search(text):
        problems.append(f"{lang} {name} shows an internal id: {ID.findall(text)}")
    if lang == "ja":
        problems += [f"ja {name} shows English: {line!r}" for line in _english_in(text)]
    return problems


async def _signed_in(fintech: FintechClient, chromium: Any, member: str, lang: str) -> Any:
    session = await signed_in_browser(fintech, member)
    url = str(fintech.http.base_url)
    cookies = [{"name": name, "value": value, "url": url} for name, value in session.cookies.items()]
    await session.aclose()
    context = await chromium.new_context(viewport={"width": 1280, "height": 900}, locale=lang)
    await context.add_cookies([*cookies, {"name": LANGUAGE_COOKIE, "value": lang, "url": url}])
    return context


@pytest.mark.timeout(600)
async def test_every_page_fits_the_screen_and_speaks_the_members_language(
    fintech: FintechClient, chromium: Any, tmp_path: Path
) -> None:
    member, _friend = await _member_with_everything(fintech)
    problems: list[str] = []
    for lang in ("en", "ja"):
        context = await _signed_in(fintech, chromium, member, lang)
        page = await context.new_page()
        try:
            for path in PAGES:
                response = await page.goto(f"{fintech.http.base_url}{path}")
                assert response is not None and response.status == 200, path
                problems += await _look(page, lang, path.strip("/"), tmp_path)
                if path == "/card":
                    problems += await _pay_button_names_only_what_is_paid(page, lang)
        finally:
            await context.close()
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(600)
async def test_a_newcomers_pages_and_the_issued_card_fit_and_speak_the_members_language(
    fintech: FintechClient, chromium: Any, tmp_path: Path
) -> None:
    problems: list[str] = []
    for lang in ("en", "ja"):
        context = await _signed_in(fintech, chromium, new_member(), lang)
        page = await context.new_page()
        try:
            for path in PAGES:
                response = await page.goto(f"{fintech.http.base_url}{path}")
                assert response is not None and response.status == 200, path
                problems += await _look(page, lang, f"new-{path.strip('/')}", tmp_path)
            await page.goto(f"{fintech.http.base_url}/card")
            await page.fill("#income", "4000000")
            await page.locator("form[action='/card/apply'] button").click()
            number = await page.inner_text("[data-card-number]")
            assert re.fullmatch(r"\d{16}", number), number
            problems += await _look(page, lang, "issued", tmp_path)
        finally:
            await context.close()
    assert not problems, "\n".join(problems)
