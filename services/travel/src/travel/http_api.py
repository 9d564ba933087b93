"""Travel's JSON API: search and hotel pages for anyone; booking, my trips and cancelling for the
member (bearer token). The member's token is passed on to points to reserve their points."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from kizuna.kit.auth import Principal, member_scope
from kizuna.kit.bounds import Int64
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import InvalidArgument, NotFound
from kizuna.kit.service import context_of
from pydantic import BaseModel

from travel import stay as rules
from travel.booking import FAILED, FAILING, PENDING, BookingRequest, Bookings
from travel.catalogue import CITIES
from travel.models import Booking
from travel.search import hotel_page, search_hotels
from travel.views import booking_json, hotel_json, offer_json, result_json

router = APIRouter(prefix="/api")


BookingsDep = Annotated[Bookings, Depends(context_of(Bookings))]
# Every member route names its scope: reads need travel:read, booking and cancelling travel:book.
Reader = Annotated[Principal, Depends(member_scope("travel:read"))]
Booker = Annotated[Principal, Depends(member_scope("travel:book"))]


def parse_stay(bookings: Bookings, check_in: str, check_out: str, guests: int) -> rules.StayRequest:
    return rules.validate_stay(
        rules.parse_date(check_in, "check_in"),
        rules.parse_date(check_out, "check_out"),
        guests,
        now=bookings.clock.now(),
        max_nights=bookings.max_stay_nights,
    )


@router.get("/cities")
async def cities() -> list[dict[str, str]]:
    return [{"city": k, "name": v} for k, v in CITIES.items()]


@router.get("/search")
async def search(
    session: SessionDep, bookings: BookingsDep, city: str, check_in: str, check_out: str, guests: Int64 = 1
) -> dict[str, Any]:
    stay = parse_stay(bookings, check_in, check_out, guests)
    results = await search_hotels(session, city, stay)
    return {
        "city": city,
        "check_in": check_in,
        "check_out": check_out,
        "guests": guests,
        "nights": len(stay.nights),
        "hotels": [result_json(r) for r in results],
    }


@router.get("/hotels/{hotel_id}")
async def hotel(
    session: SessionDep,
    bookings: BookingsDep,
    hotel_id: str,
    check_in: str | None = None,
    check_out: str | None = None,
    guests: Int64 = 1,
) -> dict[str, Any]:
    stay = parse_stay(bookings, check_in, check_out, guests) if check_in and check_out else None
    page = await hotel_page(session, hotel_id, stay)
    return {
        **hotel_json(page.hotel),
        "rooms": [
            {"room_type_id": r.id, "name": r.name, "max_guests": r.max_guests, "description": r.description}
            for r in page.rooms
        ],
        "rate_plans": [
            {
                "rate_plan_id": p.id,
                "name": p.name,
                "refundable": p.refundable,
                "breakfast": p.breakfast,
                "cancellation": rules.CancellationPolicy(p.refundable, p.free_cancel_days, p.penalty_bp).describe(),
            }
            for p in page.plans
        ],
        "offers": [offer_json(o) for o in page.offers],
    }


class BookingCreate(BaseModel):
    hotel_id: str
    room_type_id: str
    rate_plan_id: str
    check_in: str
    check_out: str
    guests: int
    points: int = 0
    idempotency_key: str


def booking_request(body: BookingCreate) -> BookingRequest:
    return BookingRequest(
        hotel_id=body.hotel_id,
        room_type_id=body.room_type_id,
        rate_plan_id=body.rate_plan_id,
        check_in=rules.parse_date(body.check_in, "check_in"),
        check_out=rules.parse_date(body.check_out, "check_out"),
        guests=body.guests,
        points=body.points,
        idempotency_key=body.idempotency_key,
    )


@router.post("/bookings", status_code=201)
async def create_booking(body: BookingCreate, member: Booker, bookings: BookingsDep) -> dict[str, Any]:
    assert member.member_id is not None
    booking = await bookings.book(member.member_id, member.token, booking_request(body))
    return booking_json(booking)


@router.get("/bookings")
async def my_bookings(member: Reader, bookings: BookingsDep, offset: Int64 = 0, limit: Int64 = 50) -> dict[str, Any]:
    assert member.member_id is not None
    if offset < 0 or not 1 <= limit <= 100:
        raise InvalidArgument("offset must be >= 0 and limit between 1 and 100")
    rows = await bookings.for_member(member.member_id, offset=offset, limit=limit)
    return {"bookings": [booking_json(b) for b in rows]}


async def _own(bookings: Bookings, member_id: str, booking_id: str) -> Booking:
    booking = await bookings.get(booking_id)
    if booking.member_id != member_id or booking.status in (PENDING, FAILING, FAILED):
        raise NotFound(f"unknown booking {booking_id!r}")
    return booking


@router.get("/bookings/{booking_id}")
async def get_booking(booking_id: str, member: Reader, bookings: BookingsDep) -> dict[str, Any]:
    assert member.member_id is not None
    return booking_json(await _own(bookings, member.member_id, booking_id))


@router.get("/bookings/{booking_id}/cancellation")
async def cancellation_quote(booking_id: str, member: Reader, bookings: BookingsDep) -> dict[str, Any]:
    """What cancelling now would cost and return, without cancelling."""
    assert member.member_id is not None
    booking = await _own(bookings, member.member_id, booking_id)
    refund = bookings.quote_cancellation(booking)
    return {
        "booking_id": booking.id,
        "penalty_minor": refund.penalty_minor,
        "card_refund_minor": refund.card_refund_minor,
        "points_refund": refund.points_refund,
        "currency": booking.currency,
    }


@router.post("/bookings/{booking_id}/cancel")
async def cancel_booking(booking_id: str, member: Booker, bookings: BookingsDep) -> dict[str, Any]:
    assert member.member_id is not None
    await _own(bookings, member.member_id, booking_id)
    return booking_json(await bookings.cancel(member.member_id, booking_id))
