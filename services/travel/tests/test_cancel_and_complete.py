"""Cancelling under the rate plan (penalty, refunds of card and points) and completing stays."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from kizuna.kit.errors import FailedPrecondition
from kizuna.travel.v1 import events_pb2
from travel.stay import HOTEL_TZ

from .travel_support import TravelEnv, booking_body, days_ahead, stream_events

HOTEL = "htl_kyoto_gion_machiya"
ROOM = f"{HOTEL}.standard_double"


async def _book(
    travel: TravelEnv, member: str, *, points: int, plan: str = "flex", have: int | None = None, key: str = "k"
) -> tuple[dict[str, str], dict[str, Any]]:
    headers = travel.member(member, points=have if have is not None else points)
    resp = await travel.http.post(
        "/api/bookings", json=booking_body(plan=plan, points=points, key=key), headers=headers
    )
    assert resp.status_code == 201, resp.text
    return headers, resp.json()


def _jst(d: Any, hour: int) -> datetime:
    return datetime.combine(d, time(hour), HOTEL_TZ).astimezone(UTC)


async def test_cancelling_before_the_deadline_is_free_and_returns_everything(travel: TravelEnv, nats_url: str) -> None:
    headers, booking = await _book(travel, "mbr_early", points=2_000)
    total = booking["total"]["amount_minor"]
    travel.clock.at = _jst(days_ahead(10) - timedelta(days=3), 0) - timedelta(seconds=1)  # the last free second

    quote = (await travel.http.get(f"/api/bookings/{booking['booking_id']}/cancellation", headers=headers)).json()
    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=headers)

    assert quote == {
        "booking_id": booking["booking_id"],
        "penalty_minor": 0,
        "card_refund_minor": total - 2_000,
        "points_refund": 2_000,
        "currency": "JPY",
    }
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled" and resp.json()["penalty"]["amount_minor"] == 0
    assert travel.cards.charged("mbr_early") == 0
    assert travel.points.balances["mbr_early"] == 2_000 and travel.points.spent("mbr_early") == 0
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2
    [msg] = await stream_events(nats_url, "travel.booking.cancelled")
    event = events_pb2.BookingCancelled.FromString(msg.data)
    assert (event.penalty.amount_minor, event.refunded.amount_minor, event.points_refunded) == (0, total - 2_000, 2_000)


async def test_after_the_deadline_the_penalty_is_kept_from_the_card_first(travel: TravelEnv, nats_url: str) -> None:
    headers, booking = await _book(travel, "mbr_late", points=2_000)
    total = booking["total"]["amount_minor"]
    travel.clock.at = _jst(days_ahead(10) - timedelta(days=3), 0)  # the deadline itself: too late
    penalty = total * 5_000 // 10_000  # Flexible: 50% after the deadline

    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=headers)

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["penalty"]["amount_minor"] == penalty
    assert body["card_refunded"]["amount_minor"] == total - 2_000 - penalty and body["points_refunded"] == 2_000
    assert travel.cards.charged("mbr_late") == penalty
    assert travel.points.balances["mbr_late"] == 2_000
    # Nothing lost: kept + returned == paid.
    assert travel.cards.charged("mbr_late") + body["card_refunded"]["amount_minor"] + body["points_refunded"] == total
    [msg] = await stream_events(nats_url, "travel.booking.cancelled")
    assert events_pb2.BookingCancelled.FromString(msg.data).penalty.amount_minor == penalty


async def test_a_penalty_larger_than_the_card_payment_takes_the_rest_from_points(travel: TravelEnv) -> None:
    # Non-refundable saver: the whole total is kept, mostly paid in points.
    body = booking_body(plan="saver")
    headers = travel.member("mbr_saver", points=100_000)
    quote = (
        await travel.http.get(
            f"/api/hotels/{HOTEL}", params={"check_in": body["check_in"], "check_out": body["check_out"], "guests": 2}
        )
    ).json()
    total = next(
        o["total_minor"] for o in quote["offers"] if o["rate_plan_id"] == f"{HOTEL}.saver" and o["room_type_id"] == ROOM
    )
    points = total - 5_000
    resp = await travel.http.post("/api/bookings", json={**body, "points": points}, headers=headers)
    assert resp.status_code == 201, resp.text

    cancelled = (await travel.http.post(f"/api/bookings/{resp.json()['booking_id']}/cancel", headers=headers)).json()

    assert cancelled["penalty"]["amount_minor"] == total
    assert cancelled["card_refunded"]["amount_minor"] == 0 and cancelled["points_refunded"] == 0
    assert travel.cards.charged("mbr_saver") == 5_000 and travel.points.spent("mbr_saver") == points
    assert travel.points.balances["mbr_saver"] == 100_000 - points


async def test_cancelling_twice_refunds_once(travel: TravelEnv) -> None:
    headers, booking = await _book(travel, "mbr_twice", points=1_000)
    first = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=headers)
    second = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=headers)

    assert first.json() == second.json()
    assert travel.points.calls.count("Refund") == 1 and travel.cards.calls.count("Refund") == 1
    assert travel.points.balances["mbr_twice"] == 1_000


async def test_a_failed_refund_is_finished_by_the_recovery_job(travel: TravelEnv, nats_url: str) -> None:
    headers, booking = await _book(travel, "mbr_retry", points=1_000)
    travel.cards.fail_next["Refund"] = FailedPrecondition("card network down")

    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=headers)

    assert resp.status_code == 503 and "in progress" in resp.json()["message"]
    assert (await travel.bookings.get(booking["booking_id"])).status == "cancelling"
    assert await stream_events(nats_url, "travel.booking.cancelled") == []
    travel.clock.at = datetime.now(UTC) + timedelta(minutes=5)
    await travel.bookings.recover_stuck()
    assert (await travel.bookings.get(booking["booking_id"])).status == "cancelled"
    assert travel.cards.charged("mbr_retry") == 0 and travel.points.balances["mbr_retry"] == 1_000
    # The points refund was retried with its idempotency key: returned once, not twice.
    assert [r.refunded for r in travel.points.reservations.values()] == [1_000]
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2
    assert len(await stream_events(nats_url, "travel.booking.cancelled")) == 1


async def test_a_stay_that_has_begun_cannot_be_cancelled_and_nothing_changes(travel: TravelEnv) -> None:
    headers, booking = await _book(travel, "mbr_begun", points=0)
    travel.clock.at = _jst(days_ahead(10), 9)

    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=headers)

    assert resp.status_code == 400 and "has begun" in resp.json()["message"]
    assert (await travel.bookings.get(booking["booking_id"])).status == "confirmed"
    assert "Refund" not in travel.cards.calls


async def test_another_members_booking_cannot_be_seen_or_cancelled(travel: TravelEnv) -> None:
    _, booking = await _book(travel, "mbr_owner", points=0)
    intruder = travel.member("mbr_intruder")
    for resp in (
        await travel.http.get(f"/api/bookings/{booking['booking_id']}", headers=intruder),
        await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=intruder),
    ):
        assert resp.status_code == 404
    assert (await travel.bookings.get(booking["booking_id"])).status == "confirmed"


async def test_a_stay_completes_after_check_out_exactly_once(travel: TravelEnv, nats_url: str) -> None:
    headers, booking = await _book(travel, "mbr_guest", points=500)
    check_out = days_ahead(12)

    travel.clock.at = _jst(check_out, 10)  # before check-out time
    assert await travel.bookings.complete_stays() == 0
    travel.clock.at = _jst(check_out, 11)
    assert await travel.bookings.complete_stays() == 1
    assert await travel.bookings.complete_stays() == 0

    assert (await travel.http.get(f"/api/bookings/{booking['booking_id']}", headers=headers)).json()["status"] == (
        "completed"
    )
    [msg] = await stream_events(nats_url, "travel.booking.completed")
    event = events_pb2.BookingCompleted.FromString(msg.data)
    assert (event.booking_id, event.member_id, event.total.amount_minor, event.points_used) == (
        booking["booking_id"],
        "mbr_guest",
        booking["total"]["amount_minor"],
        500,
    )
    # A completed stay cannot be cancelled.
    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=headers)
    assert resp.status_code == 409
