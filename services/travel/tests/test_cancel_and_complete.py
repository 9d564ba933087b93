"""Cancelling under the rate plan against the real points and fintech (penalty, refunds of card
and points), completing stays, and points earned exactly once for a completed stay."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import nats
from kizuna.kit.events import OutboxMessage
from kizuna.points.v1 import points_pb2
from kizuna.travel.v1 import events_pb2
from sqlmodel import select

from .travel_support import HOTEL, ROOM, TravelEnv, booking_body, days_ahead, jst, stream_events, wait_until


def deadline(booking: dict[str, Any]) -> datetime:
    """The Flexible plan's free cancellation ends at 00:00 JST three days before check-in (read from
    the booking: a date worked out when the module is imported is a day off once midnight in Japan
    falls between the import and the test)."""
    return jst(date.fromisoformat(booking["check_in"]) - timedelta(days=3), 0)


async def test_cancelling_before_the_deadline_is_free_and_returns_everything(travel: TravelEnv) -> None:
    member = await travel.member(points=5_000)
    limit = await travel.card_available(member.id)
    booking = await travel.book(member, points=4_000)
    total, card = booking["total"]["amount_minor"], booking["card_amount"]["amount_minor"]
    assert card > 0 and await travel.card_available(member.id) == limit - card
    travel.clock.at = deadline(booking) - timedelta(seconds=1)  # the last free second

    quote = (
        await travel.http.get(f"/api/bookings/{booking['booking_id']}/cancellation", headers=member.headers)
    ).json()
    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=member.headers)

    assert quote == {
        "booking_id": booking["booking_id"],
        "penalty_minor": 0,
        "card_refund_minor": total - 4_000,
        "points_refund": 4_000,
        "currency": "JPY",
    }
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "cancelled" and body["penalty"]["amount_minor"] == 0
    assert body["card_refunded"]["amount_minor"] == card and body["points_refunded"] == 4_000
    assert await travel.card_available(member.id) == limit
    assert await travel.spent_on_travel(member.id) == 0
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2
    [msg] = await stream_events(travel.nats_url, "travel.booking.cancelled", member.id, at_least=1)
    event = events_pb2.BookingCancelled.FromString(msg.data)
    assert (event.penalty.amount_minor, event.refunded.amount_minor, event.points_refunded) == (0, card, 4_000)
    assert (event.booking_id, event.hotel_id, event.total.amount_minor, event.points_used) == (
        booking["booking_id"],
        booking["hotel_id"],
        total,
        4_000,
    )
    assert event.occurred_at.ToDatetime(tzinfo=UTC) == travel.clock.at

    # Points settles the rest on its own: the card purchase's earn is clawed back with its refund
    # and the stay's pending earn is cancelled, which leaves the member where they started.
    async def settled() -> points_pb2.GetBalanceResponse | None:
        clawed = any(
            e.kind == points_pb2.ENTRY_KIND_CLAWBACK and e.source_service == "fintech"
            for e in await travel.entries(member.id)
        )
        balance = await travel.balance(member.id)
        return balance if clawed and balance.earning == 0 else None

    balance = await wait_until(settled, timeout=30)
    assert (balance.total, balance.pending, balance.debt) == (5_000, 0, 0)


async def test_after_the_deadline_the_penalty_is_kept_from_the_card_first(travel: TravelEnv) -> None:
    member = await travel.member(points=5_000)
    limit = await travel.card_available(member.id)
    booking = await travel.book(member, points=4_000)
    total, card = booking["total"]["amount_minor"], booking["card_amount"]["amount_minor"]
    travel.clock.at = deadline(booking)  # the deadline itself: too late
    penalty = total * 5_000 // 10_000  # Flexible: 50% after the deadline

    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=member.headers)

    assert resp.status_code == 200, resp.text
    body = resp.json()
    from_card = min(penalty, card)
    assert body["penalty"]["amount_minor"] == penalty
    assert body["card_refunded"]["amount_minor"] == card - from_card
    assert body["points_refunded"] == 4_000 - (penalty - from_card)
    assert await travel.card_available(member.id) == limit - from_card
    assert await travel.spent_on_travel(member.id) == 4_000 - body["points_refunded"]
    assert (await travel.balance(member.id)).pending == 0
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2
    [msg] = await stream_events(travel.nats_url, "travel.booking.cancelled", member.id, at_least=1)
    assert events_pb2.BookingCancelled.FromString(msg.data).penalty.amount_minor == penalty


async def test_a_penalty_larger_than_the_card_payment_takes_the_rest_from_points(travel: TravelEnv) -> None:
    # Non-refundable saver: the whole total is kept, mostly paid in points.
    body = booking_body(plan="saver")
    total = await travel.offer_total(body)
    member = await travel.member(points=total)
    limit = await travel.card_available(member.id)
    points = total - 5_000
    booking = await travel.book(member, plan="saver", points=points)

    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=member.headers)

    cancelled = resp.json()
    assert resp.status_code == 200, resp.text
    assert cancelled["penalty"]["amount_minor"] == total
    assert cancelled["card_refunded"]["amount_minor"] == 0 and cancelled["points_refunded"] == 0
    assert await travel.card_available(member.id) == limit - 5_000
    assert await travel.spent_on_travel(member.id) == points


async def test_cancelling_twice_refunds_once(travel: TravelEnv) -> None:
    member = await travel.member(points=1_000)
    limit = await travel.card_available(member.id)
    booking = await travel.book(member, points=1_000)
    first = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=member.headers)
    second = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=member.headers)

    assert first.status_code == second.status_code == 200, first.text
    assert first.json() == second.json()
    refunds = [e for e in await travel.travel_entries(member.id) if e.kind == points_pb2.ENTRY_KIND_REFUND]
    assert [e.amount for e in refunds] == [1_000]
    assert await travel.card_available(member.id) == limit


async def test_a_refund_fintech_cannot_take_is_finished_by_the_recovery_job(travel: TravelEnv) -> None:
    member = await travel.member(points=1_000)
    limit = await travel.card_available(member.id)
    booking = await travel.book(member, points=1_000)
    travel.fintech.set("cut")

    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=member.headers)

    assert resp.status_code == 503 and "in progress" in resp.json()["message"], resp.text
    assert (await travel.bookings.get(booking["booking_id"])).status == "cancelling"
    assert await stream_events(travel.nats_url, "travel.booking.cancelled", member.id) == []
    travel.fintech.set("pass")
    travel.clock.at = datetime.now(UTC) + timedelta(minutes=5)

    async def recovered() -> bool:
        # The job runs every interval, as in the service: a run soon after fintech is back may still
        # miss it (gRPC reconnects after a backoff; a loaded machine answers late).
        await travel.bookings.recover_stuck()
        return (await travel.bookings.get(booking["booking_id"])).status == "cancelled"

    await wait_until(recovered, timeout=30, interval=0.2)
    assert await travel.card_available(member.id) == limit
    # The points refund was retried with its idempotency key: returned once, not twice.
    refunds = [e for e in await travel.travel_entries(member.id) if e.kind == points_pb2.ENTRY_KIND_REFUND]
    assert [e.amount for e in refunds] == [1_000]
    assert (await travel.nights(ROOM, days_ahead(10), days_ahead(12))) == [(8, 0, 0)] * 2
    assert len(await stream_events(travel.nats_url, "travel.booking.cancelled", member.id, at_least=1)) == 1


async def test_a_stay_that_has_begun_cannot_be_cancelled_and_nothing_changes(travel: TravelEnv) -> None:
    member = await travel.member()
    limit = await travel.card_available(member.id)
    booking = await travel.book(member)
    travel.clock.at = jst(days_ahead(10), 9)

    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=member.headers)

    assert resp.status_code == 400 and "has begun" in resp.json()["message"]
    assert (await travel.bookings.get(booking["booking_id"])).status == "confirmed"
    assert await travel.card_available(member.id) == limit - booking["total"]["amount_minor"]


async def test_another_members_booking_cannot_be_seen_or_cancelled(travel: TravelEnv) -> None:
    owner, intruder = await travel.member(), await travel.member(card=False)
    booking = await travel.book(owner)
    for resp in (
        await travel.http.get(f"/api/bookings/{booking['booking_id']}", headers=intruder.headers),
        await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=intruder.headers),
    ):
        assert resp.status_code == 404
    assert (await travel.bookings.get(booking["booking_id"])).status == "confirmed"


async def test_a_stay_completes_after_check_out_exactly_once(travel: TravelEnv) -> None:
    member = await travel.member(points=500)
    booking = await travel.book(member, points=500)
    check_out = days_ahead(12)

    travel.clock.at = jst(check_out, 10)  # before check-out time
    assert await travel.bookings.complete_stays() == 0
    travel.clock.at = jst(check_out, 11)
    assert await travel.bookings.complete_stays() == 1
    assert await travel.bookings.complete_stays() == 0

    got = await travel.http.get(f"/api/bookings/{booking['booking_id']}", headers=member.headers)
    assert got.json()["status"] == "completed"
    [msg] = await stream_events(travel.nats_url, "travel.booking.completed", member.id, at_least=1)
    event = events_pb2.BookingCompleted.FromString(msg.data)
    assert (event.booking_id, event.member_id, event.total.amount_minor, event.points_used) == (
        booking["booking_id"],
        member.id,
        booking["total"]["amount_minor"],
        500,
    )
    assert event.hotel_id == booking["hotel_id"] and event.occurred_at.ToDatetime(tzinfo=UTC) == travel.clock.at
    # A completed stay cannot be cancelled.
    resp = await travel.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=member.headers)
    assert resp.status_code == 409


async def test_a_completed_stay_earns_points_exactly_once(travel: TravelEnv) -> None:
    # Paid half in points, half by card: the stay earns points' base rate (1 point per 100 yen)
    # on the money paid only; points spent earn nothing.
    body = booking_body()
    total = await travel.offer_total(body)
    used = total // 2
    member = await travel.member(points=used)
    booking = await travel.book(member, points=used)
    paid = booking["card_amount"]["amount_minor"]
    assert paid == total - used > 0
    travel.clock.at = jst(days_ahead(12), 12)

    assert await travel.bookings.complete_stays() == 1
    assert await travel.bookings.complete_stays() == 0

    async def travel_credits() -> list[points_pb2.Entry]:
        return [
            e
            for e in await travel.travel_entries(member.id)
            if e.kind == points_pb2.ENTRY_KIND_CREDIT and e.source_ref == booking["booking_id"]
        ]

    [earned] = await wait_until(travel_credits, timeout=20)
    assert earned.amount == paid * 100 // 10_000
    # The relay publishes the completion (of the earning contract) again, as after a crash
    # between publish and mark-sent:
    async with travel.runtime.db.sessions() as session:
        row = (
            await session.exec(select(OutboxMessage).where(OutboxMessage.subject == "travel.purchase.completed"))
        ).one()
    nc = await nats.connect(travel.nats_url)
    js = nc.jetstream()
    again = await js.publish(row.subject, row.payload, headers={**row.headers, "Nats-Msg-Id": f"{row.event_id}-2"})

    async def points_acknowledged_it() -> bool:
        info = await js.consumer_info("TRAVEL", "points-travel-earn")
        return bool(info.ack_floor.stream_seq >= again.seq and info.num_pending == 0 and info.num_ack_pending == 0)

    await wait_until(points_acknowledged_it, timeout=20)
    await nc.close()
    assert await travel_credits() == [earned]


async def test_the_hotel_page_promises_exactly_what_the_stay_earns(travel: TravelEnv) -> None:
    # The member sees "earn N pt" beside the room (points' earn preview), pays by card, stays:
    # points credits exactly N.
    body = booking_body(key="promise")
    total = await travel.offer_total(body)
    member = await travel.member()
    async with await travel.signed_in_browser(member) as browser:
        stay = {"check_in": body["check_in"], "check_out": body["check_out"], "guests": body["guests"]}
        page = await browser.get(f"/hotels/{HOTEL}", params=stay)
        assert page.status_code == 200, page.text
        row = next(r for r in page.text.split("<tr>") if f"{total:,}</strong>" in r and 'data-earn="' in r)
        promised = int(row.split('data-earn="')[1].split('"')[0])
        assert promised > 0
    booking = await travel.book(member, key="promise")
    travel.clock.at = jst(days_ahead(12), 12)
    assert await travel.bookings.complete_stays() == 1

    async def credited() -> list[points_pb2.Entry]:
        return [
            e
            for e in await travel.travel_entries(member.id)
            if e.kind == points_pb2.ENTRY_KIND_CREDIT and e.source_ref == booking["booking_id"]
        ]

    [earned] = await wait_until(credited, timeout=20)
    assert earned.amount == promised
