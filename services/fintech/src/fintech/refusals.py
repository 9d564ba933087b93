"""What the pages say when fintech refuses a request: fintech's own refusals, written for developers
in the JSON API ("member 'mbr_…' has no bank account", "cannot sell 5000000 micro-units: …"), in
plain words in the member's language. Anything else goes through the kit's wording (declines,
points and bank balances, amounts still due), which also removes internal ids. `refusal_words` gives
the message untranslated (its catalogue key and parameters) for a flash message, which the page that
shows it translates."""

from __future__ import annotations

import re

from kizuna.kit.flash import Param
from kizuna.kit.web.wording import say, words_for_member

# (pattern of fintech's message, what the member reads); the first match wins.
REFUSALS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^to_member_id is required$"), "Enter the member ID to send money to."),
    (re.compile(r"^cannot transfer to your own account$"), "You cannot send money to your own account."),
    (
        re.compile(r"has no bank account to receive the transfer$"),
        "No Kizuna Bank account was found for that member ID.",
    ),
    (re.compile(r"has no bank account"), "Open your Kizuna Bank account first, on the bank page."),
    (re.compile(r"^member .* has no card$"), "You have no Kizuna Card yet."),
    (re.compile(r"^the card of member .* is closed$"), "Your Kizuna Card is closed."),
    (re.compile(r"^the member already has a card$"), "You already have a Kizuna Card."),
    (re.compile(r"^annual_income_minor must be positive$"), "Enter your annual income in yen."),
    (re.compile(r"^amount must be positive"), "Enter an amount of at least ¥1."),
    (re.compile(r"^bank_minor and points must not be negative$"), "Amounts cannot be negative."),
    (re.compile(r"^a payment must be positive"), "Enter an amount from your bank, in points, or both."),
    (re.compile(r"has nothing left to pay$"), "This statement is already paid."),
    (re.compile(r"^unknown statement"), "That statement was not found."),
    (re.compile(r"^unknown fund"), "That fund is not offered."),
    (re.compile(r"less than a hundredth of a unit$"), "That amount is too small to buy this fund."),
    (re.compile(r"^cannot sell \d+ micro-units"), "You cannot sell more units than you hold."),
    (re.compile(r"^too few units to be worth anything$"), "Those units are worth less than ¥1: sell more."),
    (
        re.compile(r"^idempotency key .* was already used with a different request$"),
        "This form was already sent with other values. Reload the page and try again.",
    ),
]


def refusal_words(message: str) -> tuple[str, dict[str, Param]]:
    """The refusal `message` as a member reads it, untranslated: its catalogue key and parameters."""
    for pattern, text in REFUSALS:
        if pattern.search(message):
            return text, {}
    return words_for_member(message)


def refusal_for_member(message: str) -> str:
    """The refusal `message` as a member reads it on a page, in the request's language."""
    return say(*refusal_words(message))
