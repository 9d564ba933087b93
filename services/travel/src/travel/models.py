"""Travel's tables: the catalogue (hotels, room types, rate plans, nightly inventory) and bookings."""

from __future__ import annotations

from datetime import date, datetime

from kizuna.kit.db import UTCDateTime
from sqlalchemy import CheckConstraint, Column, Date, String, UniqueConstraint
from sqlmodel import Field, SQLModel


class Hotel(SQLModel, table=True):
    __tablename__ = "travel_hotel"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    city: str = Field(index=True, max_length=40)  # a slug: "tokyo"
    city_name: str = Field(max_length=80)
    area: str = Field(max_length=120)
    address: str = Field(max_length=300)
    stars: int
    description: str = Field(max_length=2000)


class RoomType(SQLModel, table=True):
    __tablename__ = "travel_room_type"

    id: str = Field(primary_key=True, max_length=80)
    hotel_id: str = Field(foreign_key="travel_hotel.id", index=True, max_length=64)
    name: str = Field(max_length=120)
    max_guests: int
    rooms: int  # physical rooms of this type; each night's inventory starts from it
    base_rate_minor: int  # a weekday night in JPY before seasonality
    description: str = Field(max_length=1000)


class RatePlan(SQLModel, table=True):
    __tablename__ = "travel_rate_plan"

    id: str = Field(primary_key=True, max_length=80)
    hotel_id: str = Field(foreign_key="travel_hotel.id", index=True, max_length=64)
    name: str = Field(max_length=120)
    price_bp: int  # the plan's price as basis points of the night's rate (9000 = 10% off)
    refundable: bool
    free_cancel_days: int  # free cancellation until this many days before check-in (00:00 JST)
    penalty_bp: int  # penalty after the deadline, basis points of the total
    breakfast: bool = False


class NightInventory(SQLModel, table=True):
    """One room type on one night: how many rooms exist, are held by bookings in progress, are sold."""

    __tablename__ = "travel_inventory"
    __table_args__ = (
        CheckConstraint("held >= 0 AND sold >= 0 AND held + sold <= total", name="ck_travel_inventory_no_oversell"),
    )

    room_type_id: str = Field(foreign_key="travel_room_type.id", primary_key=True, max_length=80)
    night: date = Field(sa_column=Column(Date, primary_key=True))
    total: int
    held: int = 0
    sold: int = 0
    rate_minor: int  # the night's rate (weekends and seasons cost more)


class Booking(SQLModel, table=True):
    """A booking and the state of its saga (so a restart can finish or undo it)."""

    __tablename__ = "travel_booking"
    __table_args__ = (UniqueConstraint("member_id", "idempotency_key", name="uq_travel_booking_member_key"),)

    id: str = Field(primary_key=True, max_length=40)
    member_id: str = Field(index=True, max_length=64)
    idempotency_key: str = Field(max_length=200)
    request_hash: str = Field(max_length=64)
    hotel_id: str = Field(max_length=64)
    room_type_id: str = Field(max_length=80)
    rate_plan_id: str = Field(max_length=80)
    check_in: date = Field(sa_column=Column(Date, nullable=False))
    check_out: date = Field(sa_column=Column(Date, nullable=False))
    guests: int
    currency: str = Field(default="JPY", max_length=3)
    total_minor: int
    points_used: int
    card_amount_minor: int
    # The cancellation terms as booked (a later change to the plan does not touch this booking).
    refundable: bool
    free_cancel_days: int
    penalty_bp: int
    # pending -> confirmed -> completed, or pending -> failed, or confirmed -> cancelling -> cancelled
    status: str = Field(sa_column=Column(String(20), nullable=False, index=True))
    # Where the saga is: held, points_reserved, card_authorized, captured, done
    step: str = Field(max_length=30)
    failure_reason: str = Field(default="", max_length=500)
    points_reservation_id: str = Field(default="", max_length=80)
    points_captured: bool = False
    card_authorization_id: str = Field(default="", max_length=80)
    card_capture_id: str = Field(default="", max_length=80)
    penalty_minor: int = 0
    card_refund_minor: int = 0
    points_refund: int = 0
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
