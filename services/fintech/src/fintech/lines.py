"""How card, statement and bank lines read on the pages: plain words in the member's language,
chosen by what the line is (its kind), never the stored description or memo as developers wrote it
("Payment (bank 5000, points 0)", "Sell kzn-…"). The JSON API keeps the stored text."""

from __future__ import annotations

import re

from kizuna.kit.i18n import gettext as _
from kizuna.kit.web import format_money, format_points
from kizuna.kit.web.wording import line_for_member

_PAYMENT = re.compile(r"^Payment \(bank (\d+), points (\d+)\)$")
REFUND_PREFIX = "Refund: "
SALE_PREFIX = "Sell "


def fund_name(name: str) -> str:
    """A fund's name in the member's language (the funds are Kizuna's own products)."""
    return _(name)


def payment_text(bank_minor: int, points: int) -> str:
    if bank_minor and points:
        return _("Payment: %(bank)s from your bank and %(points)s") % {
            "bank": format_money(bank_minor),
            "points": format_points(points),
        }
    if points:
        return _("Payment with %(points)s") % {"points": format_points(points)}
    return _("Payment of %(bank)s from your bank") % {"bank": format_money(bank_minor)}


def card_line(kind: str, description: str) -> str:
    """A card or statement line: a purchase reads as the merchant's name (as the merchant gives it)."""
    if kind == "refund":
        return _("Refund from %(merchant)s") % {"merchant": description.removeprefix(REFUND_PREFIX)}
    if kind == "payment":
        paid = _PAYMENT.match(description)
        if paid:
            return payment_text(int(paid.group(1)), int(paid.group(2)))
        return _("Payment")
    return description


def bank_line(kind: str, memo: str, amount_minor: int) -> str:
    """A line of the bank account's history, by the kind of its ledger entry."""
    if kind == "bank_top_up":
        return _("Test top-up")
    if kind == "bank_transfer":
        return _("Sent to another member") if amount_minor < 0 else _("Received from another member")
    if kind == "card_bill_bank_part":
        return _("Kizuna Card bill")
    if kind == "fund_buy_bank_part":
        return _("Fund purchase")
    if kind.endswith("_bank_part_returned"):
        return _("Returned: the payment did not go through")
    if kind == "fund_sell":
        return _("Fund sale: %(fund)s") % {"fund": fund_name(memo.removeprefix(SALE_PREFIX))}
    return _(line_for_member(memo))
