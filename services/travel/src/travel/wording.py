"""How travel's rules read to people: cancellation terms, booking statuses and errors.

Pages say them in the member's language (`for_page`: the kit's gettext, travel's `ja.po`); the JSON
API says them in English, its documented wording (`translate` left at its default). The catalogue's
own text (hotel, room and rate plan names) is translated in the templates with `tr`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

from kizuna.kit import i18n
from kizuna.kit.web import format_date
from kizuna.kit.web.wording import BOOKING_NOT_MADE, for_member

from travel import stay as rules

Translate = Callable[[str], str]


def _english(message: str) -> str:
    return message


# A booking's status as the member reads it (`Booking.status` -> label).
STATUS_LABELS = {
    "confirmed": "Confirmed",
    "cancelling": "Cancelling",
    "cancelled": "Cancelled",
    "completed": "Stay completed",
}


def status_label(status: str, translate: Translate = _english) -> str:
    return translate(STATUS_LABELS.get(status, status))


def _deadline(policy: rules.CancellationPolicy, check_in: date, translate: Translate, lang: str) -> str:
    deadline = policy.deadline(check_in)
    assert deadline is not None  # refundable plans have one
    local = deadline.astimezone(rules.HOTEL_TZ)
    day = format_date(local, lang) if lang != "en" else f"{local:%Y-%m-%d}"
    return translate("%(date)s %(time)s JST") % {"date": day, "time": f"{local:%H:%M}"}


def cancellation_terms(
    policy: rules.CancellationPolicy,
    check_in: date | None = None,
    *,
    translate: Translate = _english,
    lang: str = "en",
) -> str:
    """The plan's terms in a sentence: when cancelling is free (the deadline itself for a stay's
    check-in) and what it costs after."""
    pct = f"{policy.penalty_bp / 100:g}%"
    if not policy.refundable:
        return translate("Non-refundable: cancelling costs %(pct)s of the total.") % {"pct": pct}
    if check_in is not None:
        return translate("Free cancellation until %(when)s; after that %(pct)s of the total.") % {
            "when": _deadline(policy, check_in, translate, lang),
            "pct": pct,
        }
    if policy.free_days:
        return translate("Free cancellation until %(days)s days before check-in; after that %(pct)s of the total.") % {
            "days": policy.free_days,
            "pct": pct,
        }
    return translate("Free cancellation until the day of check-in; after that %(pct)s of the total.") % {"pct": pct}


def for_page(policy: rules.CancellationPolicy, check_in: date | None = None) -> str:
    """The terms in the language of the page being rendered."""
    return cancellation_terms(policy, check_in, translate=i18n.gettext, lang=i18n.language())


# ---- errors on pages --------------------------------------------------------------------------
# Travel's domain errors are written for developers and kept as they are in the JSON API; a page
# shows them in plain words in the member's language. Each rule: (pattern, message, its values).
_Values = Callable[[re.Match[str]], dict[str, str]]


def _day(value: str) -> str:
    return format_date(value, i18n.language()) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else value


ERROR_RULES: list[tuple[re.Pattern[str], str, _Values]] = [
    (
        re.compile(r"check-out \((\S+)\) must be after check-in \((\S+)\)"),
        "Check-out (%(check_out)s) must be after check-in (%(check_in)s).",
        lambda m: {"check_out": _day(m.group(1)), "check_in": _day(m.group(2))},
    ),
    (
        re.compile(r"check-in (\S+) is in the past"),
        "Check-in %(date)s is in the past.",
        lambda m: {"date": _day(m.group(1))},
    ),
    (
        re.compile(r"check-in (\S+) is more than (\d+) days ahead"),
        "Bookings open %(days)s days ahead; check-in %(date)s is later.",
        lambda m: {"date": _day(m.group(1)), "days": m.group(2)},
    ),
    (
        re.compile(r"a stay is at most (\d+) nights; (\d+) asked"),
        "A stay is at most %(most)s nights; you asked for %(asked)s.",
        lambda m: {"most": m.group(1), "asked": m.group(2)},
    ),
    (re.compile(r"guests must be at least 1"), "Please book for at least one guest.", lambda m: {}),
    (re.compile(r"must be a date as YYYY-MM-DD"), "Please give the dates as YYYY-MM-DD.", lambda m: {}),
    (re.compile(r"unknown city"), "We have no hotels in that city.", lambda m: {}),
    (
        re.compile(r"unknown hotel|has no room type|has no rate plan"),
        "That hotel, room or rate is not in our catalogue.",
        lambda m: {},
    ),
    (
        re.compile(r"that room and rate are not offered for this stay"),
        "That room and rate are not offered for this stay.",
        lambda m: {},
    ),
    (
        re.compile(r"no room left on the night of (\S+)"),
        "No room is left on the night of %(date)s.",
        lambda m: {"date": _day(m.group(1))},
    ),
    (
        re.compile(r"^(.+) sleeps at most (\d+); \d+ guests asked"),
        "%(room)s sleeps at most %(most)s guests.",
        lambda m: {"room": i18n.gettext(m.group(1)), "most": m.group(2)},
    ),
    (
        re.compile(r"^(.+) is not on sale for the night of (\S+)"),
        "%(room)s is not on sale for the night of %(date)s.",
        lambda m: {"room": i18n.gettext(m.group(1)), "date": _day(m.group(2))},
    ),
    (
        re.compile(r"the stay has begun; it can no longer be cancelled"),
        "The stay has begun; it can no longer be cancelled.",
        lambda m: {},
    ),
    (
        re.compile(r"booking \S+ is (\w+); it cannot be cancelled"),
        "This booking is %(status)s; it cannot be cancelled.",
        lambda m: {"status": status_label(m.group(1), i18n.gettext)},
    ),
    (
        re.compile(r"booking \S+ is cancelled; its refunds are still in progress"),
        "Your booking is cancelled; its refunds are still on their way.",
        lambda m: {},
    ),
    (re.compile(r"unknown booking"), "We could not find that booking.", lambda m: {}),
    (
        re.compile(r"^the booking (?:timed out|did not complete in time)$"),
        "The booking took too long and was undone; nothing was charged.",
        lambda m: {},
    ),
]
_NOT_MADE = re.compile(r"^booking \S+ was not made: (.*)$")


def page_error(message: str) -> str:
    """A domain error as a page shows it: travel's own in plain words, the rest as the kit words
    them (`kizuna.kit.web.wording.for_member`), in the request's language."""
    not_made = _NOT_MADE.match(message)
    if not_made:
        return i18n.gettext(BOOKING_NOT_MADE) % {"reason": page_error(not_made.group(1))}
    for pattern, text, values in ERROR_RULES:
        match = pattern.search(message)
        if match:
            return i18n.gettext(text) % values(match)
    return for_member(message)
