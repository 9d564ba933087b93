"""Travel's web pages: search, results and hotel pages for everyone; member pages need sign-in, and
a signed-in member books, sees and cancels trips through forms that carry the CSRF token."""

from __future__ import annotations

from kizuna.kit.testing import form_fields

from .travel_support import TravelEnv, booking_body, days_ahead


async def test_search_results_and_hotel_pages_render_on_the_kit_layout(travel: TravelEnv) -> None:
    home = await travel.http.get("/")
    assert home.status_code == 200 and "kz-header" in home.text and 'value="sapporo"' in home.text

    q = {
        "city": "fukuoka",
        "check_in": days_ahead(4).isoformat(),
        "check_out": days_ahead(6).isoformat(),
        "guests": "2",
    }
    results = await travel.http.get("/search", params=q)
    assert results.status_code == 200
    assert "Hotels in Fukuoka" in results.text and "Hakata Gate Hotel" in results.text and "¥" in results.text

    hotel = await travel.http.get("/hotels/htl_fukuoka_hakata_gate", params=q)
    assert hotel.status_code == 200
    # A hyphenated word of the rate table stays whole on narrow screens.
    assert 'Advance saver <span class="travel-nowrap">(non-refundable)</span>' in hotel.text
    assert "Sign in to book" in hotel.text
    # Pages cannot be framed and print no text from the URL.
    assert (
        hotel.headers["x-frame-options"] == "DENY"
        and "frame-ancestors 'none'" in hotel.headers["content-security-policy"]
    )

    bad = await travel.http.get("/search", params={**q, "check_out": q["check_in"]})
    assert bad.status_code == 400 and "must be after check-in" in bad.text


async def test_member_pages_send_a_browser_to_sign_in(travel: TravelEnv) -> None:
    for path in ("/trips", "/book?hotel_id=htl_x&room_type_id=r&rate_plan_id=p&check_in=x&check_out=y"):
        resp = await travel.http.get(path, headers={"accept": "text/html"})
        assert resp.status_code == 303 and resp.headers["location"].startswith("/auth/login?next=")
    resp = await travel.http.post("/trips/bkg_x/cancel", headers={"accept": "application/json"})
    assert resp.status_code == 401


async def test_a_signed_in_member_books_sees_and_cancels_a_trip_through_the_forms(travel: TravelEnv) -> None:
    hana = await travel.member(points=1_000)
    member = hana.id
    browser = await travel.signed_in_browser(hana)
    async with browser:
        body = booking_body(points=600)
        query = {k: body[k] for k in ("hotel_id", "room_type_id", "rate_plan_id", "check_in", "check_out", "guests")}
        # A GET link never fills in a booking to pay (a framed or forwarded link could): back to the hotel.
        link = await browser.get("/book", params=query)
        assert link.status_code == 303 and link.headers["location"] == f"/hotels/{query['hotel_id']}"
        hotel = await browser.get(f"/hotels/{query['hotel_id']}", params=query)
        assert "Choose your room and rate to book." in hotel.text and 'action="/book/review"' in hotel.text
        review = form_fields(hotel.text, "/book/review")
        forged_review = await browser.post("/book/review", data=query)
        assert forged_review.status_code == 403
        book_page = await browser.post("/book/review", data={**query, "csrf_token": review["csrf_token"]})
        assert book_page.status_code == 200, book_page.text
        fields = form_fields(book_page.text, "/book")
        assert fields["csrf_token"] and fields["idempotency_key"]
        booked = await browser.post("/book", data={**fields, "points": "600"})
        assert booked.status_code == 303, booked.text
        trip_url = booked.headers["location"]
        assert "Your booking is confirmed." in (await browser.get(trip_url)).text
        booking_id = trip_url.rsplit("/", 1)[1]
        booking = await travel.bookings.get(booking_id)
        assert (booking.member_id, booking.status, booking.points_used) == (member, "confirmed", 600)

        trips = await browser.get("/trips")
        assert trips.status_code == 200 and f'href="/trips/{booking_id}"' in trips.text
        assert "Gion" in trips.text and 'data-status="confirmed">Confirmed<' in trips.text

        trip = await browser.get(trip_url)
        cancel_fields = form_fields(trip.text, f"/trips/{booking_id}/cancel")
        assert cancel_fields["csrf_token"]
        # A post from another site carries the cookie but cannot know the token: nothing changes.
        for forged in ({}, {"csrf_token": "0" * 64}):
            refused = await browser.post(f"/trips/{booking_id}/cancel", data=forged)
            assert refused.status_code == 403, refused.text
        assert (await travel.bookings.get(booking_id)).status == "confirmed"
        assert await travel.spent_on_travel(member) == 600

        cancelled = await browser.post(f"/trips/{booking_id}/cancel", data=cancel_fields)
        assert cancelled.status_code == 303 and cancelled.headers["location"] == trip_url
        after = await browser.get(trip_url)
        assert 'data-flash="success"' in after.text and "Your booking is cancelled." in after.text
        assert 'data-status="cancelled">Cancelled</dd>' in after.text and "Cancel this booking" not in after.text
        assert "Penalty ¥0" in after.text and "600 points" in after.text
        assert await travel.spent_on_travel(member) == 0
        assert 'data-status="cancelled">Cancelled<' in (await browser.get("/trips")).text


async def test_a_forged_booking_post_books_nothing(travel: TravelEnv) -> None:
    forger = await travel.member(points=1_000, card=False)
    member = forger.id
    browser = await travel.signed_in_browser(forger)
    async with browser:
        body = booking_body(points=100, key="forged")
        refused = await browser.post("/book", data={k: str(v) for k, v in body.items()})
        assert refused.status_code == 403, refused.text
        assert "Gion" not in (await browser.get("/trips")).text
    assert await travel.bookings.for_member(member) == []
    assert await travel.travel_entries(member) == []
