"""Error text a member understands, in their language.

Domain errors are written for developers ("points (1156) exceed the member's balance (156)",
"the card was declined (DECLINE_REASON_FRAUD_RULE)"); the JSON API keeps them as they are. Pages
pass them through `for_member`, which rewrites the known ones in plain words (translated for the
request, kizuna.kit.i18n) and never shows an internal id or code. `words_for_member` gives the same
message untranslated, as its catalogue key and parameters, for a flash message (kizuna.kit.flash)
that is translated on the page that shows it. `line_for_member` does the same for history and
statement lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kizuna.kit.flash import Param, Word
from kizuna.kit.i18n import gettext as _

_DECLINES = {
    "DECLINE_REASON_LIMIT": "Your Kizuna Card's available credit is not enough for this payment.",
    "DECLINE_REASON_BLOCKED_CARD": "Your Kizuna Card is blocked. Unblock it on the card page to pay with it.",
    "DECLINE_REASON_FRAUD_RULE": (
        "Your Kizuna Card declined this payment to protect you from fraud. Please wait a few minutes and try again."
    ),
    "DECLINE_REASON_EXPIRED_CARD": "Your Kizuna Card has expired.",
    "DECLINE_REASON_CURRENCY_NOT_SUPPORTED": "Your Kizuna Card cannot pay in this currency.",
}
DECLINED = "Your Kizuna Card declined this payment."
ASKED_MORE_THAN_BALANCE = "You asked to use %(asked)s, but you have %(have)s."
AT_MOST_ON_ORDER = "You can use at most %(most)s on this order."
ASKED_MORE_THAN_AVAILABLE = "You asked to use %(asked)s, but you have %(have)s available."
BANK_TOO_LOW = "Your bank balance (%(balance)s) is not enough for this payment."
PAID_MORE_THAN_DUE = "You tried to pay %(paid)s, but only %(due)s is still due."
BOOKING_NOT_MADE = "Your booking was not made: %(reason)s"
SOMETHING_WRONG = "Something went wrong. Please try again."
NOT_ANSWERING = "Part of Kizuna is not answering right now. Please try again in a moment."
LINE_PAYMENT = "Payment: %(bank)s from your bank and %(points)s"
LINE_TRANSFER = "Transfer"
LINE_CARD_BILL = "Kizuna Card bill"
LINE_REFUND = "Refund: %(what)s"

# Every message this module can produce (the translation test checks each has Japanese).
MESSAGES = [
    *_DECLINES.values(),
    DECLINED,
    ASKED_MORE_THAN_BALANCE,
    AT_MOST_ON_ORDER,
    ASKED_MORE_THAN_AVAILABLE,
    BANK_TOO_LOW,
    PAID_MORE_THAN_DUE,
    BOOKING_NOT_MADE,
    SOMETHING_WRONG,
    NOT_ANSWERING,
    LINE_PAYMENT,
    LINE_TRANSFER,
    LINE_CARD_BILL,
    LINE_REFUND,
]
_ID = re.compile(r"\b(?:pur|bkg|ord|auth|stm|mbr|prd|mch|pay|txn|hld|rsv|lot|ent|crd|acct|fund)_[0-9A-Za-z]{6,}\b")


def _pt(n: str) -> str:
    return f"{int(n):,} pt"


def _yen(n: str) -> str:
    amount = int(n)
    return f"{'-' if amount < 0 else ''}¥{abs(amount):,}"


# (pattern of the developer's wording, the catalogue key and its parameters); the first match wins.
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str, dict[str, Param]]]]] = [
    (re.compile(r"(DECLINE_REASON_[A-Z_]+)"), lambda m: (_DECLINES.get(m.group(1), DECLINED), {})),
    (
        re.compile(r"points \((\d+)\) exceed the member's balance \((\d+)\)"),
        lambda m: (ASKED_MORE_THAN_BALANCE, {"asked": _pt(m.group(1)), "have": _pt(m.group(2))}),
    ),
    (
        re.compile(r"points \((\d+)\) exceed the order total \((\d+)\)"),
        lambda m: (AT_MOST_ON_ORDER, {"most": _pt(m.group(2))}),
    ),
    (
        re.compile(r"insufficient points: (\d+) requested, (\d+) available"),
        lambda m: (ASKED_MORE_THAN_AVAILABLE, {"asked": _pt(m.group(1)), "have": _pt(m.group(2))}),
    ),
    (
        re.compile(r"insufficient funds: \w+ balance (-?\d+) \w+"),
        lambda m: (BANK_TOO_LOW, {"balance": _yen(m.group(1))}),
    ),
    (
        re.compile(r"payment (\d+) exceeds the (\d+) \w+ still due"),
        lambda m: (PAID_MORE_THAN_DUE, {"paid": _yen(m.group(1)), "due": _yen(m.group(2))}),
    ),
    (re.compile(r"^the card was declined$"), lambda m: (DECLINED, {})),
    # A peer (or identity, for a service token) that gave no answer (kizuna.kit.rpc.peer_error).
    (re.compile(r"^\S+ (?:cannot be reached\b|did not answer in time$)"), lambda m: (NOT_ANSWERING, {})),
]


def words_for_member(text: str) -> tuple[str, dict[str, Param]]:
    """`for_member`'s message before translation: its catalogue key and the values of its places
    (a `Word` value is a catalogue key too), for `flash(request, kind, key, **params)`."""
    for pattern, rewrite in _RULES:
        match = pattern.search(text)
        if match:
            return rewrite(match)
    booking = re.match(r"^booking \S+ was not made: (.*)$", text)
    if booking:
        key, params = words_for_member(booking.group(1))
        # A reason with places of its own is said in the language of the moment.
        return BOOKING_NOT_MADE, {"reason": say(key, params) if params else Word(key)}
    text = _ID.sub("", text)
    text = re.sub(r"\s{2,}", " ", text).replace(" ,", ",").replace(" .", ".").strip()
    return (text[:1].upper() + text[1:], {}) if text else (SOMETHING_WRONG, {})


def say(key: str, params: dict[str, Param]) -> str:
    """A catalogue key and its parameters in the request's language."""
    if not params:
        return _(key)
    return _(key) % {name: _(value) if isinstance(value, Word) else value for name, value in params.items()}


def for_member(text: str) -> str:
    """The message to show on a page: known developer wording rewritten, ids removed."""
    return say(*words_for_member(text))


_LINES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        re.compile(r"^Payment \(bank (\d+), points (\d+)\)$"),
        lambda m: _(LINE_PAYMENT) % {"bank": _yen(m.group(1)), "points": _pt(m.group(2))},
    ),
    (re.compile(r"^Transfer from \S+ to \S+$"), lambda m: _(LINE_TRANSFER)),
    (re.compile(r"^Statement \S+$"), lambda m: _(LINE_CARD_BILL)),
    (re.compile(r"^refund (.+)$"), lambda m: _(LINE_REFUND) % {"what": m.group(1)}),
]


# The space an id leaves before punctuation, English or Japanese (full-width bracket, comma, stop).
_SPACE_BEFORE_PUNCTUATION = re.compile(
    r"\s+([,:;.)\N{FULLWIDTH RIGHT PARENTHESIS}\N{IDEOGRAPHIC COMMA}\N{IDEOGRAPHIC FULL STOP}])"
)


def line_for_member(text: str) -> str:
    """A history or statement line in plain words, without internal ids."""
    for pattern, rewrite in _LINES:
        match = pattern.search(text)
        if match:
            return rewrite(match)
    cleaned = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", re.sub(r"\s{2,}", " ", _ID.sub("", text))).strip(" :")
    return cleaned or text
