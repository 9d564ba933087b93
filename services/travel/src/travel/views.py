"""How bookings and offers look on the wire: JSON for the HTTP API, protobuf for gRPC."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.common.v1 import common_pb2
from kizuna.travel.v1 import travel_pb2

from travel.models import Booking, Hotel
from travel.search import HotelResult, Offer

_STATUS = {
    "confirmed": travel_pb2.BOOKING_STATUS_CONFIRMED,
    "cancelling": travel_pb2.BOOKING_STATUS_CANCELLED,
    "cancelled": travel_pb2.BOOKING_STATUS_CANCELLED,
    "completed": travel_pb2.BOOKING_STATUS_COMPLETED,
}


def booking_json(b: Booking) -> dict[str, Any]:
    return {
        "booking_id": b.id,
        "member_id": b.member_id,
        "hotel_id": b.hotel_id,
        "room_type_id": b.room_type_id,
        "rate_plan_id": b.rate_plan_id,
        "check_in": b.check_in.isoformat(),
        "check_out": b.check_out.isoformat(),
        "guests": b.guests,
        "status": b.status,
        "total": {"amount_minor": b.total_minor, "currency": b.currency},
        "points_used": b.points_used,
        "card_amount": {"amount_minor": b.card_amount_minor, "currency": b.currency},
        "refundable": b.refundable,
        "penalty": {"amount_minor": b.penalty_minor, "currency": b.currency},
        "card_refunded": {"amount_minor": b.card_refund_minor, "currency": b.currency},
        "points_refunded": b.points_refund,
        "failure_reason": b.failure_reason,
        "created_at": b.created_at.isoformat(),
        "updated_at": b.updated_at.isoformat(),
    }


def hotel_json(h: Hotel) -> dict[str, Any]:
    return {
        "hotel_id": h.id,
        "name": h.name,
        "city": h.city,
        "city_name": h.city_name,
        "area": h.area,
        "address": h.address,
        "stars": h.stars,
        "description": h.description,
    }


def offer_json(o: Offer) -> dict[str, Any]:
    data = asdict(o)
    data["available"] = o.rooms_free > 0
    return data


def result_json(r: HotelResult) -> dict[str, Any]:
    return {**hotel_json(r.hotel), "from_minor": r.from_minor, "offers": [offer_json(o) for o in r.offers]}


def booking_proto(b: Booking) -> travel_pb2.Booking:
    created, updated = Timestamp(), Timestamp()
    created.FromDatetime(b.created_at)
    updated.FromDatetime(b.updated_at)
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
