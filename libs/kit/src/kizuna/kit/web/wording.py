"""Error text a member understands.

Domain errors are written for developers ("points (1156) exceed the member's balance (156)",
"the card was declined (DECLINE_REASON_FRAUD_RULE)"); the JSON API keeps them as they are. Pages
pass them through `for_member`, which rewrites the known ones in plain words and never shows an
internal id or code.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_DECLINES = {
    "DECLINE_REASON_LIMIT": "Your Kizuna Card's available credit is not enough for this payment.",
    "DECLINE_REASON_BLOCKED_CARD": "Your Kizuna Card is blocked. Unblock it on the card page to pay with it.",
    "DECLINE_REASON_FRAUD_RULE": (
        "Your Kizuna Card declined this payment to protect you from fraud. Please wait a few minutes and try again."
    ),
    "DECLINE_REASON_EXPIRED_CARD": "Your Kizuna Card has expired.",
    "DECLINE_REASON_CURRENCY_NOT_SUPPORTED": "Your Kizuna Card cannot pay in this currency.",
}
_ID = re.compile(r"\b(?:pur|bkg|ord|auth|stm|mbr|prd|mch|pay|txn|hld|rsv|lot|ent|crd|acct|fund)_[0-9A-Za-z]{6,}\b")


def _pt(n: str) -> str:
    return f"{int(n):,} pt"


def _yen(n: str) -> str:
    return f"¥{int(n):,}"


_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        re.compile(r"(DECLINE_REASON_[A-Z_]+)"),
        lambda m: _DECLINES.get(m.group(1), "Your Kizuna Card declined this payment."),
    ),
    (
        re.compile(r"points \((\d+)\) exceed the member's balance \((\d+)\)"),
        lambda m: f"You asked to use {_pt(m.group(1))}, but you have {_pt(m.group(2))}.",
    ),
    (
        re.compile(r"points \((\d+)\) exceed the order total \((\d+)\)"),
        lambda m: f"You can use at most {_pt(m.group(2))} on this order.",
    ),
    (
        re.compile(r"insufficient points: (\d+) requested, (\d+) available"),
        lambda m: f"You asked to use {_pt(m.group(1))}, but you have {_pt(m.group(2))} available.",
    ),
    (
        re.compile(r"insufficient funds: \w+ balance (-?\d+) \w+"),
        lambda m: f"Your bank balance ({_yen(m.group(1))}) is not enough for this payment.",
    ),
    (
        re.compile(r"payment (\d+) exceeds the (\d+) \w+ still due"),
        lambda m: f"You tried to pay {_yen(m.group(1))}, but only {_yen(m.group(2))} is still due.",
    ),
    (re.compile(r"^the card was declined$"), lambda m: "Your Kizuna Card declined this payment."),
]


def for_member(text: str) -> str:
    """The message to show on a page: known developer wording rewritten, ids removed."""
    for pattern, rewrite in _RULES:
        match = pattern.search(text)
        if match:
            return rewrite(match)
    text = re.sub(r"\bbooking \S+ was not made: ", "Your booking was not made: ", text)
    text = _ID.sub("", text)
    text = re.sub(r"\s{2,}", " ", text).replace(" ,", ",").replace(" .", ".").strip()
    return text[:1].upper() + text[1:] if text else "Something went wrong. Please try again."


_LINES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        re.compile(r"^Payment \(bank (\d+), points (\d+)\)$"),
        lambda m: f"Payment: {_yen(m.group(1))} from your bank and {_pt(m.group(2))}",
    ),
    (re.compile(r"^Transfer from \S+ to \S+$"), lambda m: "Transfer"),
    (re.compile(r"^Statement \S+$"), lambda m: "Kizuna Card bill"),
    (re.compile(r"^refund (.+)$"), lambda m: f"Refund: {m.group(1)}"),
]


def line_for_member(text: str) -> str:
    """A history or statement line in plain words, without internal ids."""
    for pattern, rewrite in _LINES:
        match = pattern.search(text)
        if match:
            return rewrite(match)
    cleaned = re.sub(r"\s{2,}", " ", _ID.sub("", text)).replace(" ,", ",").strip(" :")
    return cleaned or text
