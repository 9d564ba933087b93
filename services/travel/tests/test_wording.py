"""How travel's rules and catalogue read: the API's English terms, and a Japanese translation for
every text a Japanese page shows from the catalogue, the statuses and the cancellation terms."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from travel import stay as rules
from travel import wording
from travel.booking_store import CANCELLED, CANCELLING, COMPLETED, CONFIRMED
from travel.catalogue import CITIES, HOTELS, PLANS, ROOMS

JA_PO = Path(wording.__file__).parent / "locale" / "ja.po"
FLEX = rules.CancellationPolicy(refundable=True, free_days=3, penalty_bp=5_000)
SAME_DAY = rules.CancellationPolicy(refundable=True, free_days=0, penalty_bp=3_000)
SAVER = rules.CancellationPolicy(refundable=False, free_days=0, penalty_bp=10_000)


def _japanese() -> dict[str, str]:
    from kizuna.kit import web

    catalogues = [Path(web.__file__).parent / "locale" / "ja.po", JA_PO]
    found: dict[str, str] = {}
    for path in catalogues:
        with path.open("rb") as handle:
            found |= {m.id: m.string for m in read_po(handle) if isinstance(m.id, str) and isinstance(m.string, str)}
    return found


def _catalogue_texts() -> list[str]:
    texts = list(CITIES.values())
    for h in HOTELS:
        texts += [h.name, h.area, h.address, h.description]
    texts += [r.name for r in ROOMS] + [r.description for r in ROOMS] + [p.name for p in PLANS]
    return texts


def test_the_api_words_the_terms_in_english() -> None:
    assert (
        wording.cancellation_terms(FLEX)
        == "Free cancellation until 3 days before check-in; after that 50% of the total."
    )
    assert wording.cancellation_terms(FLEX, date(2030, 3, 20)) == (
        "Free cancellation until 2030-03-17 00:00 JST; after that 50% of the total."
    )
    assert wording.cancellation_terms(SAME_DAY) == (
        "Free cancellation until the day of check-in; after that 30% of the total."
    )
    assert wording.cancellation_terms(SAVER, date(2030, 3, 20)) == "Non-refundable: cancelling costs 100% of the total."


def test_japanese_terms_name_the_deadline_in_japan() -> None:
    ja = _japanese()
    terms = wording.cancellation_terms(FLEX, date(2030, 3, 20), translate=lambda m: ja.get(m) or m, lang="ja")
    assert terms == "2030年3月17日 00:00（日本時間）までキャンセル無料。それ以降は合計額の50%がかかります。"  # noqa: RUF001


@pytest.mark.parametrize("text", _catalogue_texts())
def test_every_catalogue_text_has_japanese(text: str) -> None:
    assert _japanese().get(text), text


def test_every_status_and_term_has_japanese() -> None:
    ja = _japanese()
    for status in (CONFIRMED, CANCELLING, CANCELLED, COMPLETED):
        assert ja.get(wording.status_label(status)), status
    for policy, check_in in ((FLEX, None), (FLEX, date(2030, 3, 20)), (SAME_DAY, None), (SAVER, None)):
        missing: list[str] = []

        def translate(message: str, missing: list[str] = missing) -> str:
            if not ja.get(message):
                missing.append(message)
            return ja.get(message) or message

        wording.cancellation_terms(policy, check_in, translate=translate, lang="ja")
        assert missing == []


# Travel's domain errors as the JSON API words them, one for each rule a page rewrites.
DOMAIN_ERRORS = [
    "check-out (2030-03-12) must be after check-in (2030-03-12)",
    "check-in 2030-03-09 is in the past (today is 2030-03-10 at the hotel)",
    "check-in 2032-03-12 is more than 365 days ahead",
    "a stay is at most 14 nights; 15 asked",
    "guests must be at least 1",
    "check_in must be a date as YYYY-MM-DD, got 'next friday'",
    "unknown city 'atlantis'; one of tokyo, kyoto",
    "unknown hotel 'htl_nowhere'",
    "that room and rate are not offered for this stay",
    "booking bkg_01ABCDEFGH was not made: no room left on the night of 2030-03-12",
    "Standard Double sleeps at most 2; 3 guests asked",
    "Standard Double is not on sale for the night of 2030-04-01",
    "the stay has begun; it can no longer be cancelled",
    "booking bkg_01ABCDEFGH is completed; it cannot be cancelled",
    "booking bkg_01ABCDEFGH is cancelled; its refunds are still in progress",
    "unknown booking 'bkg_x'",
    "booking bkg_01ABCDEFGH was not made: the booking did not complete in time",
]


@pytest.mark.parametrize("message", DOMAIN_ERRORS)
def test_a_page_shows_travels_errors_in_plain_japanese(message: str) -> None:
    from kizuna.kit import i18n

    i18n.load(JA_PO.parent)
    i18n.set_language("ja")
    try:
        shown = wording.page_error(message)
    finally:
        i18n.set_language("en")
    assert not re.search(r"[A-Za-z]{3,}", shown.replace("YYYY-MM-DD", "")), shown
    assert "bkg_" not in shown


def test_english_pages_read_the_errors_in_plain_words() -> None:
    assert wording.page_error("a stay is at most 14 nights; 15 asked") == (
        "A stay is at most 14 nights; you asked for 15."
    )
    assert wording.page_error("booking bkg_01ABCDEFGH was not made: no room left on the night of 2030-03-12") == (
        "Your booking was not made: No room is left on the night of 12 Mar 2030."
    )
