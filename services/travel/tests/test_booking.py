"""Booking through the HTTP API: hold every night, pay with points and card, confirm — or undo it all."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Any

from kizuna.kit.errors import FailedPrecondition
from kizuna.travel.v1 import events_pb2

from .travel_support import MEMBER_SCOPES, TravelEnv, booking_body, days_ahead, stream_events

ROOM = "htl_kyoto_gion_machiya.standard_double"


def _d(s: str) -> date:
    return date.fromisoformat(s)


async def test_points_and_card_pay_the_total_and_every_night_is_sold(travel: TravelEnv, nats_url: str) -> None:
    headers = travel.member("mbr_alice", points=5_000)
    body = booking_body(points=3_000, nights=3)
    quote = (
        await travel.http.get(
            "/api/hotels/htl_kyoto_gion_machiya",
            params={"check_in": body["check_in"], "check_out": body["check_out"], "guests": 2},
        )
    ).json()
    offer = next(o for o in quote["offers"] if o["room_type_id"] == ROOM and o["rate_plan_id"].endswith(".flex"))

    resp = await travel.http.post("/api/bookings", json=body, headers=headers)

    assert resp.status_code == 201, resp.text
    booking = resp.json()
    assert booking["status"] == "confirmed"
    assert booking["total"] == {"amount_minor": offer["total_minor"], "currency": "JPY"}
    assert booking["points_used"] == 3_000
    assert booking["card_amount"]["amount_minor"] == offer["total_minor"] - 3_000
    assert travel.points.balances["mbr_alice"] == 2_000 and travel.points.spent("mbr_alice") == 3_000
    assert travel.cards.charged("mbr_alice") == offer["total_minor"] - 3_000
    assert travel.cards.open_holds("mbr_alice") == 0
    nights = await travel.nights(ROOM, _d(body["check_in"]), _d(body["check_out"]))
    assert nights == [(8, 0, 1)] * 3
    msgs = [m for m in await stream_events(nats_url, "travel.booking.confirmed")]
    assert len(msgs) == 1
    event = events_pb2.BookingConfirmed.FromString(msgs[0].data)
    assert event.booking_id == booking["booking_id"] and event.member_id == "mbr_alice"
    assert event.total.amount_minor == offer["total_minor"] and event.points_used == 3_000
    assert (event.check_in.year, event.check_in.month, event.check_in.day) == _d(body["check_in"]).timetuple()[:3]
    assert msgs[0].headers["ce-subject"] == "mbr_alice"
    mine = (await travel.http.get("/api/bookings", headers=headers)).json()["bookings"]
    assert [b["booking_id"] for b in mine] == [booking["booking_id"]]


async def test_a_retry_with_the_same_key_returns_the_first_booking_and_pays_once(travel: TravelEnv) -> None:
    headers = travel.member("mbr_bob", points=1_000)
    first = await travel.http.post("/api/bookings", json=booking_body(points=1_000, key="once"), headers=headers)
    again = await travel.http.post("/api/bookings", json=booking_body(points=1_000, key="once"), headers=headers)
    other = await travel.http.post("/api/bookings", json=booking_body(points=0, key="once"), headers=headers)

    assert first.status_code == again.status_code == 201
    assert again.json()["booking_id"] == first.json()["booking_id"]
    assert other.status_code == 409 and other.json()["error"] == "already_exists"
    assert travel.points.calls.count("Reserve") == 1 and travel.cards.calls.count("Authorize") == 1
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 1)] * 2


async def test_concurrent_bookings_of_the_last_room_one_wins_no_night_oversold(travel: TravelEnv) -> None:
    # Overlapping stays all want the one room left on day 10..13; every one of them crosses day 11.
    start = days_ahead(10)
    await travel.leave_rooms(ROOM, start, start + timedelta(days=4), free=1)
    stays = [(start + timedelta(days=i % 2), 2 + i % 2) for i in range(8)]
    members = [f"mbr_racer{i}" for i in range(8)]
    headers = [travel.member(m, points=2_000) for m in members]

    async def book(i: int) -> Any:
        check_in, nights = stays[i]
        body = booking_body(check_in=check_in, nights=nights, points=2_000, key=f"race-{i}")
        return await travel.http.post("/api/bookings", json=body, headers=headers[i])

    responses = await asyncio.gather(*(book(i) for i in range(8)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 7, [r.text for r in responses]
    assert all("no room left" in r.json()["message"] for r in responses if r.status_code == 409)
    for total, held, sold in await travel.nights(ROOM, start, start + timedelta(days=4)):
        assert held == 0 and held + sold <= total == 8
    winner = next(i for i, r in enumerate(responses) if r.status_code == 201)
    check_in, nights = stays[winner]
    won = await travel.nights(ROOM, check_in, check_in + timedelta(days=nights))
    assert all(sold == 8 for _, _, sold in won)
    # Only the winner paid; nobody else has a hold left.
    for i, m in enumerate(members):
        assert travel.points.held(m) == 0 and travel.cards.open_holds(m) == 0
        assert travel.points.spent(m) == (2_000 if i == winner else 0)
        assert (travel.cards.charged(m) > 0) == (i == winner)


async def test_not_enough_points_fails_and_leaves_nothing_behind(travel: TravelEnv) -> None:
    headers = travel.member("mbr_poor", points=100)
    resp = await travel.http.post("/api/bookings", json=booking_body(points=500), headers=headers)

    assert resp.status_code == 409 and "not enough points" in resp.json()["message"]
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2
    assert "Authorize" not in travel.cards.calls
    assert travel.points.balances["mbr_poor"] == 100
    assert (await travel.http.get("/api/bookings", headers=headers)).json()["bookings"] == []
    # The refusal is remembered: a retry gets the same answer without paying again.
    again = await travel.http.post("/api/bookings", json=booking_body(points=500), headers=headers)
    assert again.status_code == 409 and travel.points.calls.count("Reserve") == 1


async def test_card_decline_voids_the_points_and_releases_the_nights(travel: TravelEnv) -> None:
    headers = travel.member("mbr_declined", points=1_000, credit=500)
    resp = await travel.http.post("/api/bookings", json=booking_body(points=1_000), headers=headers)

    assert resp.status_code == 409 and "card declined (DECLINE_REASON_LIMIT)" in resp.json()["message"]
    assert travel.points.balances["mbr_declined"] == 1_000 and travel.points.held("mbr_declined") == 0
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2


async def test_a_card_capture_failure_refunds_captured_points_and_voids_the_card(travel: TravelEnv) -> None:
    headers = travel.member("mbr_unlucky", points=1_000)
    travel.cards.fail_next["Capture"] = FailedPrecondition("authorization expired")
    resp = await travel.http.post("/api/bookings", json=booking_body(points=1_000), headers=headers)

    assert resp.status_code == 409 and "authorization expired" in resp.json()["message"]
    assert travel.points.balances["mbr_unlucky"] == 1_000 and travel.points.spent("mbr_unlucky") == 0
    assert travel.cards.charged("mbr_unlucky") == 0 and travel.cards.open_holds("mbr_unlucky") == 0
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2


async def test_recovery_undoes_a_saga_that_stopped_after_reserving_points(travel: TravelEnv) -> None:
    """As if travel crashed right after points answered Reserve: the job voids it and frees the nights."""
    travel.member("mbr_crash", points=1_000)
    token = travel.issuer.member_token("mbr_crash", scope=MEMBER_SCOPES)
    body = booking_body(points=1_000, key="crash")
    from travel.http_api import BookingCreate, booking_request
    from travel.stay import validate_stay

    request = booking_request(BookingCreate(**body))
    bookings = travel.bookings
    stay = validate_stay(request.check_in, request.check_out, 2, now=bookings.clock.now(), max_nights=14)
    held = await bookings._hold("mbr_crash", request, stay, bookings.clock.now())
    rid = await bookings.payments.reserve_points(
        member_id="mbr_crash", amount=1_000, booking_id=held.id, reason="x", ttl_seconds=900, member_token=token
    )
    await bookings._record(held.id, expect_step="held", step="points_reserved", points_reservation_id=rid)
    assert travel.points.balances["mbr_crash"] == 0

    assert await bookings.recover_stuck() == 0  # not stuck yet
    travel.clock.at = bookings.clock.now() + timedelta(minutes=5)
    assert await bookings.recover_stuck() == 1

    assert (await bookings.get(held.id)).status == "failed"
    assert travel.points.balances["mbr_crash"] == 1_000
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2


async def test_recovery_confirms_a_saga_that_stopped_after_capturing(travel: TravelEnv, nats_url: str) -> None:
    travel.member("mbr_almost", points=0)
    from travel.http_api import BookingCreate, booking_request
    from travel.stay import validate_stay

    bookings = travel.bookings
    request = booking_request(BookingCreate(**booking_body(key="almost")))
    stay = validate_stay(request.check_in, request.check_out, 2, now=bookings.clock.now(), max_nights=14)
    held = await bookings._hold("mbr_almost", request, stay, bookings.clock.now())
    auth = await bookings.payments.authorize_card(
        member_id="mbr_almost",
        amount_minor=held.card_amount_minor,
        currency="JPY",
        booking_id=held.id,
        member_token=travel.issuer.member_token("mbr_almost", scope=MEMBER_SCOPES),
    )
    await bookings.payments.capture_card(authorization_id=auth.authorization_id, booking_id=held.id)
    await bookings._record(
        held.id, expect_step="held", step="captured", card_authorization_id=auth.authorization_id, card_capture_id="cap"
    )
    travel.clock.at = bookings.clock.now() + timedelta(minutes=5)

    await bookings.recover_stuck()

    assert (await bookings.get(held.id)).status == "confirmed"
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 1)] * 2
    assert len(await stream_events(nats_url, "travel.booking.confirmed")) == 1
