"""A message travel's forms leave for the next page is said in the language of that page: a member
who sends a form in Japanese and switches to English before the next page reads it in English, and
the reverse. (The message is queued as its catalogue key; kizuna.kit.flash.)"""

from __future__ import annotations

import html
import re

import httpx
import pytest
from kizuna.kit.i18n import COOKIE as LANGUAGE_COOKIE
from kizuna.kit.testing import form_fields

from .travel_support import HOTEL, TravelEnv, booking_body, days_ahead

# Each message travel's pages queue, as each language says it.
SAID = {
    "choose": {"en": "Choose your room and rate to book.", "ja": "予約する部屋とプランをお選びください。"},
    "booked": {
        "en": "Your booking is confirmed. Have a good trip!",
        "ja": "ご予約が確定しました。よいご旅行を\N{FULLWIDTH EXCLAMATION MARK}",
    },
    "confirm": {
        "en": "Please confirm the cancellation and its cost.",
        "ja": "キャンセルとキャンセル料をご確認ください。",
    },
    "cancelled": {"en": "Your booking is cancelled.", "ja": "ご予約をキャンセルしました。"},
}


def _flashes(page: str) -> list[tuple[str, str]]:
    return [(kind, html.unescape(text)) for kind, text in re.findall(r'data-flash="(\w+)">([^<]*)</p>', page)]


async def _sent_then_read(browser: httpx.AsyncClient, sent: httpx.Response, read_in: str) -> list[tuple[str, str]]:
    """The messages the page after `sent` shows once the member has switched to `read_in`."""
    assert sent.status_code == 303, sent.text
    browser.cookies.set(LANGUAGE_COOKIE, read_in)
    page = await browser.get(sent.headers["location"])
    assert page.status_code == 200, page.text
    assert _flashes((await browser.get(sent.headers["location"])).text) == []  # shown once
    return _flashes(page.text)


@pytest.mark.parametrize(("sent_in", "read_in"), [("ja", "en"), ("en", "ja")])
async def test_travels_messages_are_said_in_the_language_of_the_page_that_shows_them(
    travel: TravelEnv, sent_in: str, read_in: str
) -> None:
    member = await travel.member(points=0)
    saver = await travel.book(member, plan="saver", key=f"saver-{sent_in}")
    body = booking_body(check_in=days_ahead(10))
    stay = {k: body[k] for k in ("check_in", "check_out", "guests")}
    async with await travel.signed_in_browser(member) as browser:
        # An old booking link: back to the hotel with a hint.
        browser.cookies.set(LANGUAGE_COOKIE, sent_in)
        link = await browser.get("/book", params={"hotel_id": HOTEL})
        assert await _sent_then_read(browser, link, read_in) == [("info", SAID["choose"][read_in])]

        # Booking through the forms, the last one sent in the first language.
        browser.cookies.set(LANGUAGE_COOKIE, sent_in)
        hotel = await browser.get(f"/hotels/{HOTEL}", params=stay)
        review = await browser.post(
            "/book/review",
            data={
                **{k: str(body[k]) for k in ("hotel_id", "room_type_id", "rate_plan_id", "check_in", "check_out")},
                "guests": str(body["guests"]),
                "csrf_token": form_fields(hotel.text, "/book/review")["csrf_token"],
            },
        )
        assert review.status_code == 200, review.text
        booked = await browser.post("/book", data={**form_fields(review.text, "/book"), "points": "0"})
        trip_url = booked.headers["location"]
        assert await _sent_then_read(browser, booked, read_in) == [("success", SAID["booked"][read_in])]

        # A non-refundable booking's cancel form sent without the member's yes.
        browser.cookies.set(LANGUAGE_COOKIE, sent_in)
        saver_url = f"/trips/{saver['booking_id']}"
        token = form_fields((await browser.get(saver_url)).text, f"{saver_url}/cancel")["csrf_token"]
        unconfirmed = await browser.post(f"{saver_url}/cancel", data={"csrf_token": token})
        assert await _sent_then_read(browser, unconfirmed, read_in) == [("warning", SAID["confirm"][read_in])]

        # The free cancellation of the booking made above.
        browser.cookies.set(LANGUAGE_COOKIE, sent_in)
        cancel = form_fields((await browser.get(trip_url)).text, f"{trip_url}/cancel")
        cancelled = await browser.post(f"{trip_url}/cancel", data=cancel)
        assert await _sent_then_read(browser, cancelled, read_in) == [("success", SAID["cancelled"][read_in])]
    assert (await travel.bookings.get(trip_url.rsplit("/", 1)[1])).status == "cancelled"
    assert (await travel.bookings.get(saver["booking_id"])).status == "confirmed"
