"""How travel's values look on the wire: the JSON API's response models (`...Public`) and gRPC's
protobuf messages. The API's wording (cancellation terms) is English."""

from __future__ import annotations

from datetime import date

from kizuna.common.v1 import common_pb2
from kizuna.kit.clock import timestamp
from kizuna.travel.v1 import travel_pb2
from pydantic import AliasChoices, BaseModel, Field

from travel import wording
from travel.models import Booking, Hotel, RatePlan, RoomType
from travel.search import HotelPage, HotelResult, Offer
from travel.search import policy_of as plan_policy
from travel.stay import Refund, StayRequest

_STATUS = {
    "confirmed": travel_pb2.BOOKING_STATUS_CONFIRMED,
    "cancelling": travel_pb2.BOOKING_STATUS_CANCELLED,
    "cancelled": travel_pb2.BOOKING_STATUS_CANCELLED,
    "completed": travel_pb2.BOOKING_STATUS_COMPLETED,
}


class MoneyPublic(BaseModel):
    amount_minor: int
    currency: str


class CityPublic(BaseModel):
    city: str
    name: str


class HotelPublic(BaseModel):
    hotel_id: str = Field(validation_alias=AliasChoices("hotel_id", "id"))
    name: str
    city: str
    city_name: str
    area: str
    address: str
    stars: int
    description: str

    @classmethod
    def of(cls, h: Hotel) -> HotelPublic:
        return cls.model_validate(h, from_attributes=True)


class OfferPublic(BaseModel):
    room_type_id: str
    room_name: str
    max_guests: int
    rate_plan_id: str
    plan_name: str
    breakfast: bool
    refundable: bool
    cancellation: str
    rooms_free: int
    night_prices: list[int]
    total_minor: int
    currency: str
    available: bool

    @classmethod
    def of(cls, o: Offer, check_in: date) -> OfferPublic:
        return cls(
            room_type_id=o.room_type_id,
            room_name=o.room_name,
            max_guests=o.max_guests,
            rate_plan_id=o.rate_plan_id,
            plan_name=o.plan_name,
            breakfast=o.breakfast,
            refundable=o.refundable,
            cancellation=wording.cancellation_terms(o.policy, check_in),
            rooms_free=o.rooms_free,
            night_prices=list(o.night_prices),
            total_minor=o.total_minor,
            currency=o.currency,
            available=o.rooms_free > 0,
        )


class HotelResultPublic(HotelPublic):
    from_minor: int | None
    offers: list[OfferPublic]

    @classmethod
    def of_result(cls, r: HotelResult, stay: StayRequest) -> HotelResultPublic:
        return cls(
            **HotelPublic.of(r.hotel).model_dump(),
            from_minor=r.from_minor,
            offers=[OfferPublic.of(o, stay.check_in) for o in r.offers],
        )


class SearchPublic(BaseModel):
    city: str
    check_in: str
    check_out: str
    guests: int
    nights: int
    hotels: list[HotelResultPublic]


class RoomPublic(BaseModel):
    room_type_id: str = Field(validation_alias=AliasChoices("room_type_id", "id"))
    name: str
    max_guests: int
    description: str

    @classmethod
    def of(cls, r: RoomType) -> RoomPublic:
        return cls.model_validate(r, from_attributes=True)


class RatePlanPublic(BaseModel):
    rate_plan_id: str
    name: str
    refundable: bool
    breakfast: bool
    cancellation: str

    @classmethod
    def of(cls, p: RatePlan) -> RatePlanPublic:
        return cls(
            rate_plan_id=p.id,
            name=p.name,
            refundable=p.refundable,
            breakfast=p.breakfast,
            cancellation=wording.cancellation_terms(plan_policy(p)),
        )


class HotelPagePublic(HotelPublic):
    rooms: list[RoomPublic]
    rate_plans: list[RatePlanPublic]
    offers: list[OfferPublic]

    @classmethod
    def of_page(cls, page: HotelPage, stay: StayRequest | None) -> HotelPagePublic:
        return cls(
            **HotelPublic.of(page.hotel).model_dump(),
            rooms=[RoomPublic.of(r) for r in page.rooms],
            rate_plans=[RatePlanPublic.of(p) for p in page.plans],
            offers=[OfferPublic.of(o, stay.check_in) for o in page.offers] if stay else [],
        )


class BookingPublic(BaseModel):
    booking_id: str
    member_id: str
    hotel_id: str
    room_type_id: str
    rate_plan_id: str
    check_in: str
    check_out: str
    guests: int
    status: str
    total: MoneyPublic
    points_used: int
    card_amount: MoneyPublic
    refundable: bool
    penalty: MoneyPublic
    card_refunded: MoneyPublic
    points_refunded: int
    failure_reason: str
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, b: Booking) -> BookingPublic:
        def money(amount: int) -> MoneyPublic:
            return MoneyPublic(amount_minor=amount, currency=b.currency)

        return cls(
            booking_id=b.id,
            member_id=b.member_id,
            hotel_id=b.hotel_id,
            room_type_id=b.room_type_id,
            rate_plan_id=b.rate_plan_id,
            check_in=b.check_in.isoformat(),
            check_out=b.check_out.isoformat(),
            guests=b.guests,
            status=b.status,
            total=money(b.total_minor),
            points_used=b.points_used,
            card_amount=money(b.card_amount_minor),
            refundable=b.refundable,
            penalty=money(b.penalty_minor),
            card_refunded=money(b.card_refund_minor),
            points_refunded=b.points_refund,
            failure_reason=b.failure_reason,
            created_at=b.created_at.isoformat(),
            updated_at=b.updated_at.isoformat(),
        )


class BookingListPublic(BaseModel):
    bookings: list[BookingPublic]


class CancellationQuotePublic(BaseModel):
    booking_id: str
    penalty_minor: int
    card_refund_minor: int
    points_refund: int
    currency: str

    @classmethod
    def of(cls, booking: Booking, refund: Refund) -> CancellationQuotePublic:
        return cls(
            booking_id=booking.id,
            penalty_minor=refund.penalty_minor,
            card_refund_minor=refund.card_refund_minor,
            points_refund=refund.points_refund,
            currency=booking.currency,
        )


def booking_proto(b: Booking) -> travel_pb2.Booking:
    created, updated = timestamp(b.created_at), timestamp(b.updated_at)
    return travel_pb2.Booking(
        booking_id=b.id,
        member_id=b.member_id,
        hotel_id=b.hotel_id,
        room_type_id=b.room_type_id,
        check_in=common_pb2.Date(year=b.check_in.year, month=b.check_in.month, day=b.check_in.day),
        check_out=common_pb2.Date(year=b.check_out.year, month=b.check_out.month, day=b.check_out.day),
        guests=b.guests,
        total=common_pb2.Money(amount_minor=b.total_minor, currency=b.currency),
        points_used=b.points_used,
        status=_STATUS.get(b.status, travel_pb2.BOOKING_STATUS_UNSPECIFIED),
        created_at=created,
        updated_at=updated,
    )
