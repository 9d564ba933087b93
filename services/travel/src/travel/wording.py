"""How travel's rules read to people: cancellation terms and booking statuses.

Pages say them in the member's language (`for_page`: the kit's gettext, travel's `ja.po`); the JSON
API says them in English, its documented wording (`translate` left at its default). The catalogue's
own text (hotel, room and rate plan names) is translated in the templates with `tr`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from kizuna.kit import i18n
from kizuna.kit.web import format_date

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
