"""The member's pages with the real points service: "earn N pt" on the hotel cards, the rate table
and the booking page (points' earn preview), asked at once and left out when points does not
answer; every domain text in Japanese on Japanese pages; a non-refundable cancellation asks first."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from kizuna.kit.testing import form_fields

from .travel_support import HOTEL, TravelEnv, booking_body, days_ahead, wait_until

STAY = {"check_in": days_ahead(5).isoformat(), "check_out": days_ahead(7).isoformat(), "guests": "2"}
JA = {"accept-language": "ja"}


def _earned(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-earn="(\d+)"', html)]


async def _review(browser: httpx.AsyncClient, hotel_page: str) -> httpx.Response:
    """The booking page of the stay's first room and rate, from the hotel page's form."""
    body = booking_body(check_in=days_ahead(5))
    fields = {k: v for k, v in body.items() if k not in ("points", "idempotency_key")}
    csrf = form_fields(hotel_page, "/book/review")["csrf_token"]
    return await browser.post("/book/review", data={**fields, "csrf_token": csrf})


async def test_hotel_cards_rates_and_the_booking_page_show_what_the_stay_earns(travel: TravelEnv) -> None:
    member = await travel.member()
    async with await travel.signed_in_browser(member) as browser:
        results = await browser.get("/search", params={"city": "kyoto", **STAY})
        hotel = await browser.get(f"/hotels/{HOTEL}", params=STAY)
        review = await _review(browser, hotel.text)
    assert results.status_code == hotel.status_code == review.status_code == 200, review.text
    # One badge per hotel card with a room, one per offer of the rate table, one on the review.
    cards = results.text.count('class="hotel-result"')
    assert len(_earned(results.text)) == cards == 3
    offers = hotel.text.count('action="/book/review"')
    assert len(_earned(hotel.text)) == offers == 9
    [promised] = _earned(review.text)
    assert promised > 0
    # Anonymous visitors see no badge: nobody to ask points about.
    anonymous = await travel.http.get("/search", params={"city": "kyoto", **STAY})
    assert anonymous.status_code == 200 and _earned(anonymous.text) == []


# Asking on every page (no quiet period), so that both points cut off and points stalled are asked.
@pytest.mark.parametrize("travel_overrides", [{"earn_preview_budget_seconds": 1.5, "earn_preview_quiet_seconds": 0}])
async def test_without_points_the_pages_render_at_once_without_badges(travel: TravelEnv) -> None:
    member = await travel.member()
    async with await travel.signed_in_browser(member) as browser:
        with travel.points.away("cut"):  # then stalled; passing again after the block
            for mode in ("cut", "stall"):
                travel.points.set(mode)
                started = time.monotonic()
                results = await browser.get("/search", params={"city": "tokyo", **STAY})
                hotel = await browser.get(f"/hotels/{HOTEL}", params=STAY)
                took = time.monotonic() - started
                assert results.status_code == hotel.status_code == 200, (mode, results.text)
                assert _earned(results.text) == [] and _earned(hotel.text) == [], mode
                assert "Sign in to book" not in hotel.text and 'action="/book/review"' in hotel.text
                # Nine offers of distinct prices asked at once: one wait (1.5 s) per page at most, not nine.
                assert took < 6, (mode, took)

        async def badges_back() -> bool:
            # gRPC reconnects to points after its backoff.
            return len(_earned((await browser.get(f"/hotels/{HOTEL}", params=STAY)).text)) == 9

        await wait_until(badges_back, timeout=30)


async def test_the_booking_page_asks_points_for_its_promise_not_what_the_hotel_page_remembered(
    travel: TravelEnv,
) -> None:
    member = await travel.member()
    async with await travel.signed_in_browser(member) as browser:
        hotel = await browser.get(f"/hotels/{HOTEL}", params=STAY)
        assert len(_earned(hotel.text)) == 9  # every offer's answer, remembered for a minute
        # Points goes away: the hotel page still shows what it remembered; the booking page, which
        # makes a promise, asks again and shows none rather than a remembered one.
        with travel.points.away("cut"):
            assert len(_earned((await browser.get(f"/hotels/{HOTEL}", params=STAY)).text)) == 9
            review = await _review(browser, hotel.text)
        assert review.status_code == 200, review.text
        assert _earned(review.text) == [] and 'action="/book"' in review.text


async def test_japanese_pages_say_every_domain_text_in_japanese(travel: TravelEnv) -> None:
    member = await travel.member(points=0)
    booking = await travel.book(member, plan="saver", key="ja")
    async with await travel.signed_in_browser(member) as browser:
        hotel = (await browser.get(f"/hotels/{HOTEL}", params=STAY, headers=JA)).text
        plain = (await browser.get(f"/hotels/{HOTEL}", headers=JA)).text
        results = (await browser.get("/search", params={"city": "kyoto", **STAY}, headers=JA)).text
        trip = (await browser.get(f"/trips/{booking['booking_id']}", headers=JA)).text
        trips = (await browser.get("/trips", headers=JA)).text
    for text in (
        "祇園町家ステイ",
        "スタンダードダブル",
        "フレキシブル（朝食付き）",  # noqa: RUF001
        "早割（返金不可）",  # noqa: RUF001
        "キャンセル無料",
    ):
        assert text in hotel, text
    assert "チェックインの3日前までキャンセル無料" in plain and "返金不可：キャンセルすると合計額の100%" in plain  # noqa: RUF001
    assert "京都府京都市東山区祇園町南側570-120" in plain
    assert "嵐山リバーサイド温泉" in results and "嵐山" in results
    assert "予約確定" in trip and "返金不可" in trip and "この予約は返金不可です" in trip
    assert "予約確定" in trips and "祇園町家ステイ" in trips
    for english in ("Flexible", "Advance saver", "Free cancellation", "Non-refundable", "Standard Double", "Confirmed"):
        for page in (hotel, plain, trip, trips):
            assert english not in page, english
    # Travel's errors too; the JSON API keeps its English wording whatever the browser asks for.
    same_day = {**STAY, "check_out": STAY["check_in"]}
    bad = await travel.http.get("/search", params={"city": "kyoto", **same_day}, headers=JA)
    assert bad.status_code == 400 and "チェックアウト日" in bad.text and "must be after" not in bad.text
    api_error = await travel.http.get("/api/search", params={"city": "kyoto", **same_day}, headers=JA)
    assert "must be after check-in" in api_error.json()["message"]
    api = (await travel.http.get(f"/api/hotels/{HOTEL}", headers=JA)).json()
    terms = {p["name"]: p["cancellation"] for p in api["rate_plans"]}
    assert terms["Flexible"] == "Free cancellation until 3 days before check-in; after that 50% of the total."


async def test_a_non_refundable_booking_is_cancelled_only_after_the_member_says_yes(travel: TravelEnv) -> None:
    member = await travel.member(points=0)
    booking = await travel.book(member, plan="saver", key="saver")
    trip_url = f"/trips/{booking['booking_id']}"
    async with await travel.signed_in_browser(member) as browser:
        trip = await browser.get(trip_url)
        assert "This booking is non-refundable." in trip.text
        fields = form_fields(trip.text, f"{trip_url}/cancel")
        assert fields["confirmed"] == "yes"
        # The cancel form posted without the member's yes (a script, an old form) changes nothing.
        unconfirmed = await browser.post(f"{trip_url}/cancel", data={"csrf_token": fields["csrf_token"]})
        assert unconfirmed.status_code == 303 and unconfirmed.headers["location"] == trip_url
        assert "Please confirm the cancellation and its cost." in (await browser.get(trip_url)).text
        assert (await travel.bookings.get(booking["booking_id"])).status == "confirmed"

        confirmed = await browser.post(f"{trip_url}/cancel", data=fields)
        assert confirmed.status_code == 303
    cancelled = await travel.bookings.get(booking["booking_id"])
    assert (cancelled.status, cancelled.penalty_minor) == ("cancelled", booking["total"]["amount_minor"])
