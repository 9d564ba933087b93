"""Travel's web pages: search, results and hotel pages for everyone; member pages need sign-in."""

from __future__ import annotations

from travel_support import TravelEnv, days_ahead


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
    assert "Advance saver (non-refundable)" in hotel.text and "/book?hotel_id=htl_fukuoka_hakata_gate" in hotel.text

    bad = await travel.http.get("/search", params={**q, "check_out": q["check_in"]})
    assert bad.status_code == 400 and "must be after check-in" in bad.text


async def test_member_pages_send_a_browser_to_sign_in(travel: TravelEnv) -> None:
    for path in ("/trips", "/book?hotel_id=h&room_type_id=r&rate_plan_id=p&check_in=x&check_out=y"):
        resp = await travel.http.get(path, headers={"accept": "text/html"})
        assert resp.status_code == 303 and resp.headers["location"].startswith("/auth/login?next=")
    resp = await travel.http.post("/trips/bkg_x/cancel", headers={"accept": "application/json"})
    assert resp.status_code == 401
