"""The member's history in plain words, in their language ("en" or "ja").

An entry keeps the English line written when it was posted (`points_entry.explanation`); English
readers get it as it is. For Japanese the line is rebuilt: the lines points writes itself (earned,
campaign bonus, expiry, debt notes, ...) are recognised and said again in Japanese from the
catalogue (`points/locale/ja.po`), and a line a calling service wrote (a free-text reason) is
translated when the catalogue knows it, else replaced by a plain line built from the entry's kind,
service and reference. Open holds and pending earnings are written here for both languages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from kizuna.kit import i18n

LOCALES = ("en", "ja")
i18n.load(Path(__file__).parent / "locale")

# Every message below has a Japanese translation in points/locale/ja.po.
EARNED_AT_ON = "Earned at %(place)s on %(what)s"
EARNED_AT = "Earned at %(place)s"
CAMPAIGN_BONUS = "campaign bonus"
RATE_BASE = "%(rate)s base"
RATE_FOR_USING = "%(rate)s for using %(services)s this month"
CAMPAIGN_POINTS = "%(points)s limited-time points from %(campaign)s"
CAPPED_PER_PURCHASE = "capped at %(points)s points per purchase"
CAPPED_PER_MONTH = "capped at %(points)s points per month"
MERCHANT_BONUS = "Merchant campaign bonus at %(place)s on %(what)s"
WELCOME_BONUS = "Welcome bonus: %(campaign)s"
WELCOME = "Welcome bonus"
POINTS_FROM = "Points from %(place)s"
POINTS_FROM_ON = "Points from %(place)s on %(what)s"
SPENT_AT = "Spent at %(place)s"
SPENT_AT_ON = "Spent at %(place)s on %(what)s"
REFUND_FROM = "Refund from %(place)s"
REFUND_FROM_ON = "Refund from %(place)s on %(what)s"
TAKEN_BACK_BY = "Taken back by %(place)s"
TAKEN_BACK_BY_ON = "Taken back by %(place)s on %(what)s"
WHAT_CANCELLED = "%(what)s cancelled"
WHAT_REFUNDED = "%(what)s refunded"
EXPIRED_REGULAR = "%(points)s regular points expired"
EXPIRED_LIMITED = "%(points)s limited-time points expired"
REPAID_DEBT = "%(points)s repaid debt"
RETURNED_REPAID_DEBT = "%(points)s of the points returned repaid debt"
EXPIRED_NOT_RETURNED = "%(points)s points had expired and did not return"
POINTS_OWED = "%(points)s points owed"
HELD_AT = "Held for a checkout at %(place)s"
HELD_AT_ON = "Held for %(what)s at %(place)s"
BEING_EARNED_AT = "Being earned at %(place)s"
BEING_EARNED_AT_ON = "Being earned at %(place)s on %(what)s"
ORDER = "order %(id)s"
BOOKING = "booking %(id)s"
CARD_PURCHASE = "card purchase at %(merchant)s"
LINE_AND_RATE = "%(line)s: %(rate)s"
WITH_NOTES = "%(line)s (%(notes)s)"
NOTE_SEPARATOR = "; "
AND = " and "
LIST_SEPARATOR = ", "

MESSAGES = [
    EARNED_AT_ON,
    EARNED_AT,
    CAMPAIGN_BONUS,
    RATE_BASE,
    RATE_FOR_USING,
    CAMPAIGN_POINTS,
    CAPPED_PER_PURCHASE,
    CAPPED_PER_MONTH,
    MERCHANT_BONUS,
    WELCOME_BONUS,
    WELCOME,
    POINTS_FROM,
    POINTS_FROM_ON,
    SPENT_AT,
    SPENT_AT_ON,
    REFUND_FROM,
    REFUND_FROM_ON,
    TAKEN_BACK_BY,
    TAKEN_BACK_BY_ON,
    WHAT_CANCELLED,
    WHAT_REFUNDED,
    EXPIRED_REGULAR,
    EXPIRED_LIMITED,
    REPAID_DEBT,
    RETURNED_REPAID_DEBT,
    EXPIRED_NOT_RETURNED,
    POINTS_OWED,
    HELD_AT,
    HELD_AT_ON,
    BEING_EARNED_AT,
    BEING_EARNED_AT_ON,
    ORDER,
    BOOKING,
    CARD_PURCHASE,
    LINE_AND_RATE,
    WITH_NOTES,
    NOTE_SEPARATOR,
    AND,
    LIST_SEPARATOR,
]

# An internal id (ord_01J..., rsv_..., welcome:cmp_...): never shown as "what" to a member.
_ID = re.compile(r"^(?:[a-z]+:)?[a-z]{2,8}_[0-9A-Za-z]{6,}$")


def check_locale(locale: str) -> str:
    """The locale asked for: "en" (also for empty) or "ja"; anything else is a ValueError."""
    locale = (locale or "en").lower()
    if locale not in LOCALES:
        raise ValueError(f"locale must be one of {', '.join(LOCALES)}")
    return locale


class Speaker:
    """Says the ledger's lines in one language; `label` gives a service's name (English)."""

    def __init__(self, locale: str, label: Callable[[str], str]) -> None:
        self.locale = locale
        self._label = label

    def say(self, message: str, **values: object) -> str:
        text = message if self.locale == "en" else (i18n.translation(message, self.locale) or message)
        return text % values if values else text

    def word(self, text: str) -> str:
        """Text from data (a service's label, a campaign's name): the catalogue's when it has one."""
        if self.locale == "en" or not text:
            return text
        return i18n.translation(text, self.locale) or text

    def welcome(self, campaign: str) -> str:
        """A welcome bonus's line: "Welcome bonus: Spring 2027", or the campaign's name alone when
        it says what it is already ("Welcome bonus" is not said twice, in either language)."""
        name = self.word(campaign)
        if self.say(WELCOME).casefold() in name.casefold():
            return name
        return self.say(WELCOME_BONUS, campaign=name)

    def purchase(self, what: str) -> str:
        """A purchase as its seller labelled it ("order 1042", "booking 7", "card purchase at X")."""
        if self.locale == "en":
            return what
        for pattern, template, name in (
            (r"order (\S+)", ORDER, "id"),
            (r"booking (\S+)", BOOKING, "id"),
            (r"card purchase at (.+)", CARD_PURCHASE, "merchant"),
        ):
            match = re.fullmatch(pattern, what)
            if match:
                return self.say(template, **{name: match.group(1)})
        return self.word(what)

    def place(self, service: str) -> str:
        return self.word(self._label(service))

    def join(self, names: list[str]) -> str:
        if len(names) == 1:
            return names[0]
        return self.say(LIST_SEPARATOR).join(names[:-1]) + self.say(AND) + names[-1]

    def points(self, text: str) -> str:
        return f"{int(text):,}"

    # ---- open items, written here in both languages ---------------------------------------------

    def hold(self, service: str, ref: str, reason: str) -> str:
        what = _what(ref)
        if self.locale == "en" and reason:
            return f"Held: {reason}"
        if what:
            return self.say(HELD_AT_ON, what=what, place=self.place(service))
        return self.say(HELD_AT, place=self.place(service))

    def earning(self, service: str, ref: str, label: str) -> str:
        what = label or _what(ref)
        if what:
            return self.say(BEING_EARNED_AT_ON, place=self.place(service), what=self.purchase(what))
        return self.say(BEING_EARNED_AT, place=self.place(service))

    # ---- posted entries -------------------------------------------------------------------------

    def entry(self, kind: str, stored: str, service: str, ref: str) -> str:
        """A posted entry's line: as stored in English; rebuilt in Japanese."""
        head, notes = _split_notes(stored)
        if self.locale == "en":
            welcome = _WELCOME_LINE.fullmatch(head)
            return stored.replace(head, self.welcome(welcome.group(1)), 1) if welcome else stored
        said = self._known(head, kind, service, ref)
        if said is None:
            said = self.word(head) if i18n.translation(head, self.locale) else self._generic(kind, service, ref)
        if notes:
            said = self.say(WITH_NOTES, line=said, notes=self.say(NOTE_SEPARATOR).join(self._note(n) for n in notes))
        return said

    def _known(self, head: str, kind: str, service: str, ref: str) -> str | None:
        match = re.fullmatch(r"Earned at (.+?)(?: on (.+?))?: (.+)", head)
        if match and kind == "credit":
            place = self.word(match.group(1))
            what = match.group(2)
            line = (
                self.say(EARNED_AT_ON, place=place, what=self.purchase(what))
                if what
                else self.say(EARNED_AT, place=place)
            )
            return self.say(LINE_AND_RATE, line=line, rate=self._rate(match.group(3)))
        match = re.fullmatch(r"Merchant campaign bonus at (.+?) on (.+)", head)
        if match:
            return self.say(MERCHANT_BONUS, place=self.word(match.group(1)), what=self.purchase(match.group(2)))
        match = _WELCOME_LINE.fullmatch(head)
        if match:
            return self.welcome(match.group(1))
        match = re.fullmatch(r"(\d+) (regular|limited-time) points expired", head)
        if match:
            template = EXPIRED_REGULAR if match.group(2) == "regular" else EXPIRED_LIMITED
            return self.say(template, points=self.points(match.group(1)))
        match = re.fullmatch(r"(.+) (cancelled|refunded)", head)
        if match and kind == "clawback" and ref and match.group(1) == ref:
            template = WHAT_CANCELLED if match.group(2) == "cancelled" else WHAT_REFUNDED
            what = _what(ref)
            return self.say(template, what=what) if what else self._generic(kind, service, ref)
        for prefix, template in (
            ("Spent at ", SPENT_AT),
            ("Refund from ", REFUND_FROM),
            ("Taken back by ", TAKEN_BACK_BY),
        ):
            if head == prefix + service:
                return self.say(template, place=self.place(service))
        return None

    def _rate(self, text: str) -> str:
        if text == CAMPAIGN_BONUS:
            return self.say(CAMPAIGN_BONUS)
        capped = re.fullmatch(r"(.+) \(capped at (\d+) points (per purchase|per month)\)", text)
        cap = ""
        if capped:
            text = capped.group(1)
            template = CAPPED_PER_PURCHASE if capped.group(3) == "per purchase" else CAPPED_PER_MONTH
            cap = self.say(template, points=self.points(capped.group(2)))
        parts = []
        for part in text.split(" + "):
            base = re.fullmatch(r"(\S+%) base", part)
            using = re.fullmatch(r"(\S+%) for using (.+) this month", part)
            bonus = re.fullmatch(r"(\d+) limited-time points from (.+)", part)
            if base:
                parts.append(self.say(RATE_BASE, rate=base.group(1)))
            elif using:
                names = re.split(r", | and ", using.group(2))
                services = self.join([self.word(n) for n in names])
                parts.append(self.say(RATE_FOR_USING, rate=using.group(1), services=services))
            elif bonus:
                parts.append(
                    self.say(CAMPAIGN_POINTS, points=self.points(bonus.group(1)), campaign=self.word(bonus.group(2)))
                )
            else:
                parts.append(self.word(part))
        said = " + ".join(parts)
        return self.say(WITH_NOTES, line=said, notes=cap) if cap else said

    def _note(self, note: str) -> str:
        for pattern, template in (
            (r"(\d+) of the points returned repaid debt", RETURNED_REPAID_DEBT),
            (r"(\d+) repaid debt", REPAID_DEBT),
            (r"(\d+) points had expired and did not return", EXPIRED_NOT_RETURNED),
            (r"(\d+) points owed", POINTS_OWED),
        ):
            match = re.fullmatch(pattern, note)
            if match:
                return self.say(template, points=self.points(match.group(1)))
        return self.word(note)

    def _generic(self, kind: str, service: str, ref: str) -> str:
        """A line from the entry's facts alone, for a free-text reason the catalogue lacks."""
        what = _what(ref)
        place = self.place(service)
        plain, with_what = {
            "spend": (SPENT_AT, SPENT_AT_ON),
            "refund": (REFUND_FROM, REFUND_FROM_ON),
            "clawback": (TAKEN_BACK_BY, TAKEN_BACK_BY_ON),
        }.get(kind, (POINTS_FROM, POINTS_FROM_ON))
        return self.say(with_what, place=place, what=what) if what else self.say(plain, place=place)


_WELCOME_LINE = re.compile(r"Welcome bonus: (.+)")
_NOTES = re.compile(
    r"^(.*) \(((?:\d+ of the points returned repaid debt|\d+ repaid debt|\d+ points had expired and did not return"
    r"|\d+ points owed)(?:; .*)?)\)$"
)


def _split_notes(text: str) -> tuple[str, list[str]]:
    """A stored line and its trailing notes: "Refund (10 repaid debt; 5 points ...)" -> head, notes."""
    match = _NOTES.match(text)
    if not match:
        return text, []
    return match.group(1), match.group(2).split("; ")


def _what(ref: str) -> str:
    """The reference as a member may read it: empty when it is an internal id."""
    return "" if not ref or _ID.match(ref) else ref
