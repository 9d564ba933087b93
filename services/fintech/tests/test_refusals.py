"""Fintech's refusals read in plain words on the pages, in English and Japanese."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import fintech
import pytest
from fintech.refusals import REFUSALS, refusal_for_member
from kizuna.kit import i18n


@pytest.fixture
def japanese() -> Iterator[None]:
    i18n.load(Path(fintech.__file__).parent / "locale")
    i18n.set_language("ja")
    yield
    i18n.set_language("en")


@pytest.mark.parametrize("text", [text for _pattern, text in REFUSALS])
def test_every_refusal_has_japanese(japanese: None, text: str) -> None:
    translated = i18n.gettext(text)
    assert translated != text and not re.search(r"[A-Za-z]{2,}", translated.replace("Kizuna", "").replace("ID", ""))


@pytest.mark.parametrize(
    ("message", "english"),
    [
        ("cannot transfer to your own account", "You cannot send money to your own account."),
        (
            "member 'mbr_0123456789abcdef' has no bank account to receive the transfer",
            "No Kizuna Bank account was found for that member ID.",
        ),
        ("member 'mbr_0123456789abcdef' has no bank account", "Open your Kizuna Bank account first, on the bank page."),
        ("member 'mbr_0123456789abcdef' has no card", "You have no Kizuna Card yet."),
        ("cannot sell 5000000 micro-units: 1201148 held", "You cannot sell more units than you hold."),
        ("statement stm_01J0000000000000000000000 has nothing left to pay", "This statement is already paid."),
        (
            "idempotency key 'k1' was already used with a different request",
            "This form was already sent with other values. Reload the page and try again.",
        ),
    ],
)
def test_fintechs_own_refusals_are_reworded(message: str, english: str) -> None:
    assert refusal_for_member(message) == english


def test_other_refusals_go_through_the_kits_wording() -> None:
    # The kit's rule for the bank balance, with the amounts in yen; no internal id is left.
    said = refusal_for_member("insufficient funds: bank balance 100 JPY cannot cover 500 JPY")
    assert said == "Your bank balance (¥100) is not enough for this payment."
