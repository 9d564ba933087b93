"""Travel's JSON API: search and hotel pages for anyone; booking, my trips and cancelling for the
member (bearer token). The member's token is passed on to points to reserve their points."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from kizuna.kit.auth import Principal, member_scope
from kizuna.kit.bounds import Int64
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import InvalidArgument, PermissionDenied
from kizuna.kit.service import context_of
from pydantic import BaseModel

from travel import stay as rules
from travel.booking import BookingRequest, Bookings
from travel.catalogue import CITIES
from travel.search import hotel_page, search_hotels
from travel.views import (
    BookingListPublic,
    BookingPublic,
    CancellationQuotePublic,
    CityPublic,
    HotelPagePublic,
    HotelResultPublic,
    SearchPublic,
)

router = APIRouter(prefix="/api")


BookingsDep = Annotated[Bookings, Depends(context_of(Bookings))]
# Every member route names its scope: reads need travel:read, booking and cancelling travel:book.
Reader = Annotated[Principal, Depends(member_scope("travel:read"))]
Booker = Annotated[Principal, Depends(member_scope("travel:book"))]


def _member_id(member: Principal) -> str:
    # member_scope lets only a member's token through; a service token never reaches a route.
    if member.member_id is None:
        raise PermissionDenied("this route needs a member's own token")
    return member.member_id


@router.get("/cities")
async def cities() -> list[CityPublic]:
    return [CityPublic(city=k, name=v) for k, v in CITIES.items()]


@router.get("/search")
async def search(
    session: SessionDep, bookings: BookingsDep, city: str, check_in: str, check_out: str, guests: Int64 = 1
) -> SearchPublic:
    stay = bookings.parse_stay(check_in, check_out, guests)
    results = await search_hotels(session, city, stay)
    return SearchPublic(
        city=city,
        check_in=check_in,
        check_out=check_out,
        guests=guests,
        nights=len(stay.nights),
        hotels=[HotelResultPublic.of_result(r, stay) for r in results],
    )


@router.get("/hotels/{hotel_id}")
async def hotel(
    session: SessionDep,
    bookings: BookingsDep,
    hotel_id: str,
    check_in: str | None = None,
    check_out: str | None = None,
    guests: Int64 = 1,
) -> HotelPagePublic:
    stay = bookings.parse_stay(check_in, check_out, guests) if check_in and check_out else None
    return HotelPagePublic.of_page(await hotel_page(session, hotel_id, stay), stay)


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
async def create_booking(body: BookingCreate, member: Booker, bookings: BookingsDep) -> BookingPublic:
    booking = await bookings.book(_member_id(member), member.token, booking_request(body))
    return BookingPublic.of(booking)


@router.get("/bookings")
async def my_bookings(member: Reader, bookings: BookingsDep, offset: Int64 = 0, limit: Int64 = 50) -> BookingListPublic:
    if offset < 0 or not 1 <= limit <= 100:
        raise InvalidArgument("offset must be >= 0 and limit between 1 and 100")
    rows = await bookings.for_member(_member_id(member), offset=offset, limit=limit)
    return BookingListPublic(bookings=[BookingPublic.of(b) for b in rows])


@router.get("/bookings/{booking_id}")
async def get_booking(booking_id: str, member: Reader, bookings: BookingsDep) -> BookingPublic:
    return BookingPublic.of(await bookings.of_member(_member_id(member), booking_id))


@router.get("/bookings/{booking_id}/cancellation")
async def cancellation_quote(booking_id: str, member: Reader, bookings: BookingsDep) -> CancellationQuotePublic:
    """What cancelling now would cost and return, without cancelling."""
    booking = await bookings.of_member(_member_id(member), booking_id)
    return CancellationQuotePublic.of(booking, bookings.quote_cancellation(booking))


@router.post("/bookings/{booking_id}/cancel")
async def cancel_booking(booking_id: str, member: Booker, bookings: BookingsDep) -> BookingPublic:
    member_id = _member_id(member)
    await bookings.of_member(member_id, booking_id)
    return BookingPublic.of(await bookings.cancel(member_id, booking_id))
