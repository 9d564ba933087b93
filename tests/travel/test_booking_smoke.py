from __future__ import annotations

from travel_support import TravelEnv, booking_body


async def test_book_with_points_and_card(travel: TravelEnv) -> None:
    headers = travel.member("mbr_alice", points=5_000)
    resp = await travel.http.post("/api/bookings", json=booking_body(points=3_000), headers=headers)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "confirmed"
