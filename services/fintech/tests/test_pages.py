"""The web pages ask for sign-in through the kit's OIDC client and serve the shared layout; the
invest page sells units (the card and bank forms are exercised beside a real points service in
tests/fintech)."""

from __future__ import annotations

import uuid

import pytest
from kizuna.kit.i18n import COOKIE as LANGUAGE_COOKIE
from kizuna.kit.testing import form_fields

from .fintech_world import FintechClient, new_member, signed_in_browser


@pytest.mark.parametrize("path", ["/card", "/bank", "/invest"])
async def test_pages_send_a_browser_without_a_session_to_sign_in(fintech: FintechClient, path: str) -> None:
    resp = await fintech.http.get(path, headers={"accept": "text/html"})
    assert resp.status_code == 303 and resp.headers["location"].startswith(f"/auth/login?next=%2F{path[1:]}")
    css = await fintech.http.get("/_kizuna/kizuna.css")
    assert css.status_code == 200


async def test_a_member_sells_fund_units_on_the_invest_page(fintech: FintechClient) -> None:
    member = new_member()
    headers = fintech.member_headers(member)
    await fintech.open_bank(member, top_up=50_000)
    bought = await fintech.http.post(
        "/api/funds/kzn-global-bond/buy",
        json={"bank_minor": 30_000, "points": 0, "idempotency_key": uuid.uuid4().hex},
        headers=headers,
    )
    assert bought.status_code == 200, bought.text

    async def held() -> int:
        holdings = (await fintech.http.get("/api/holdings", headers=headers)).json()["holdings"]
        return sum(int(h["units_micro"]) for h in holdings)

    before, bank_before = await held(), await fintech.bank_balance(member)
    browser = await signed_in_browser(fintech, member)
    try:
        page = (await browser.get("/invest")).text
        sell = form_fields(page, "/invest/kzn-global-bond/sell")
        assert f'value="{before // 1_000_000}.{before % 1_000_000:06d}"' in page  # all units, as a default
        for bad in ("abc", "0", "-1", "0.0000001", "1e400", before * 2):
            refused = await browser.post("/invest/kzn-global-bond/sell", data={**sell, "units": str(bad)})
            assert refused.status_code == 303
            page = (await browser.get("/invest")).text
            assert 'data-flash="error"' in page, bad
            sell = form_fields(page, "/invest/kzn-global-bond/sell")  # each page gives a fresh key
        assert await held() == before

        sold = await browser.post("/invest/kzn-global-bond/sell", data={**sell, "units": "1.5"})
        assert sold.status_code == 303 and sold.headers["location"] == "/invest"
        shown = (await browser.get("/invest")).text
        assert "the money is in your bank account" in shown
        again = await browser.post("/invest/kzn-global-bond/sell", data={**sell, "units": "1.5"})  # double submit
        assert again.status_code == 303
        assert await held() == before - 1_500_000
        assert await fintech.bank_balance(member) > bank_before
    finally:
        await browser.aclose()


async def test_a_refused_form_is_explained_in_the_members_language(fintech: FintechClient) -> None:
    member = new_member()
    await fintech.open_bank(member, top_up=10_000)
    browser = await signed_in_browser(fintech, member)
    browser.cookies.set(LANGUAGE_COOKIE, "ja")
    try:
        transfer = form_fields((await browser.get("/bank")).text, "/bank/transfer")
        to_self = await browser.post("/bank/transfer", data={**transfer, "to_member_id": member, "amount_minor": "100"})
        assert to_self.status_code == 303 and to_self.headers["location"] == "/bank"
        assert "ご自身の口座には送金できません。" in (await browser.get("/bank")).text

        # Closing a statement without a card: a message on the card page, not an error document.
        # (A page without a card has no such form; the session's CSRF token is the apply form's.)
        token = form_fields((await browser.get("/card")).text, "/card/apply")["csrf_token"]
        no_card = await browser.post("/card/statements/close-now", data={"csrf_token": token})
        assert no_card.status_code == 303 and no_card.headers["location"] == "/card"
        assert "まだKizunaカードをお持ちではありません。" in (await browser.get("/card")).text
    finally:
        await browser.aclose()
    assert await fintech.bank_balance(member) == 10_000
