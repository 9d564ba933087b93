"""A message fintech's forms leave for the next page, a refusal included, is said in the language of
that page: a member who sends a form in Japanese and switches to English before the next page reads
it in English, and the reverse. (The message is queued as its catalogue key and parameters;
kizuna.kit.flash.)"""

from __future__ import annotations

import ast
import html
import re
from collections.abc import Iterator
from pathlib import Path

import fintech
import httpx
import pytest
from fintech import pages
from kizuna.kit import i18n
from kizuna.kit.testing import form_fields

from .fintech_world import FintechClient, new_member, signed_in_browser

OPEN, CLOSE = "\N{FULLWIDTH LEFT PARENTHESIS}", "\N{FULLWIDTH RIGHT PARENTHESIS}"
FUND = "kzn-global-bond"


def _flashes(page: str) -> list[tuple[str, str]]:
    return [(kind, html.unescape(text)) for kind, text in re.findall(r'data-flash="(\w+)">([^<]*)</p>', page)]


class Member:
    """A signed-in browser that sends each form in one language and reads the next page in another."""

    def __init__(self, browser: httpx.AsyncClient, sent_in: str, read_in: str) -> None:
        self.browser, self.sent_in, self.read_in = browser, sent_in, read_in

    async def send(self, page: str, action: str, **values: str) -> list[tuple[str, str]]:
        """Post the form of `page` to `action` in the first language; the messages the next page
        shows in the second."""
        self.browser.cookies.set(i18n.COOKIE, self.sent_in)
        fields = form_fields((await self.browser.get(page)).text, action)
        sent = await self.browser.post(action, data={**fields, **values})
        assert sent.status_code == 303, sent.text
        self.browser.cookies.set(i18n.COOKIE, self.read_in)
        shown = await self.browser.get(sent.headers["location"])
        assert shown.status_code == 200, shown.text
        assert _flashes((await self.browser.get(sent.headers["location"])).text) == []  # shown once
        return _flashes(shown.text)


@pytest.mark.parametrize(("sent_in", "read_in"), [("ja", "en"), ("en", "ja")])
async def test_fintechs_messages_are_said_in_the_language_of_the_page_that_shows_them(
    fintech: FintechClient, sent_in: str, read_in: str
) -> None:
    hana, kenji = new_member(), new_member()
    await fintech.open_bank(hana, top_up=50_000)
    await fintech.open_bank(kenji)
    browser = await signed_in_browser(fintech, hana)
    member = Member(browser, sent_in, read_in)
    english = read_in == "en"
    try:
        # Fintech's own refusal, and one the kit words with the member's balance in it.
        to_self = await member.send("/bank", "/bank/transfer", to_member_id=hana, amount_minor="100")
        assert to_self == [
            ("error", "You cannot send money to your own account." if english else "ご自身の口座には送金できません。")
        ]
        too_much = await member.send("/bank", "/bank/transfer", to_member_id=kenji, amount_minor="1000000")
        assert too_much == [
            (
                "error",
                "Your bank balance (¥50,000) is not enough for this payment."
                if english
                else f"銀行口座の残高{OPEN}¥50,000{CLOSE}が不足しています。",
            )
        ]
        # What was done, with its amount.
        bought = await member.send("/invest", f"/invest/{FUND}/buy", bank_minor="30000", points="0")
        assert bought == [("success", "Bought for ¥30,000." if english else "¥30,000で購入しました。")]
        sent = await member.send("/bank", "/bank/transfer", to_member_id=kenji, amount_minor="1000")
        assert sent == [("success", "¥1,000 sent." if english else "¥1,000を送金しました。")]
        topped = await member.send("/bank", "/bank/top-up", amount_minor="500")
        assert topped == [("success", "¥500 added to your account." if english else "口座に¥500を入金しました。")]
    finally:
        await browser.aclose()
    assert await fintech.bank_balance(hana) == 50_000 - 30_000 - 1_000 + 500
    assert await fintech.bank_balance(kenji) == 1_000


@pytest.fixture
def japanese() -> Iterator[None]:
    i18n.load(Path(fintech.__file__).parent / "locale")
    i18n.set_language("ja")
    yield
    i18n.set_language("en")


def _queued_keys() -> list[str]:
    """The messages fintech's pages queue: the text arguments of their `_back` and `_paid` calls
    (no translation call marks them any more; they are translated when shown)."""
    tree = ast.parse(Path(pages.__file__).read_text())
    return [
        arg.value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in ("_back", "_paid")
        for arg in call.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and re.search(r"[A-Za-z]{2,}\W", arg.value)
    ]


@pytest.mark.parametrize("key", _queued_keys())
def test_every_message_the_pages_queue_has_japanese_with_the_same_places(japanese: None, key: str) -> None:
    said = i18n.gettext(key)
    assert said != key and not re.search(r"[A-Za-z]{2,}", re.sub(r"%\(\w+\)s|Kizuna", "", said))
    assert sorted(re.findall(r"%\((\w+)\)s", said)) == sorted(re.findall(r"%\((\w+)\)s", key))


def test_the_check_finds_the_pages_messages() -> None:
    keys = _queued_keys()
    assert "Your Kizuna Card is issued." in keys and "Bought for %(bank)s and %(points)s." in keys
    assert not {"/card", "warning", "info"} & set(keys)
