"""Bookings in travel's database: reading them, holding a stay's nights, recording the saga's steps.

Every write is one transaction. Holding takes every night of the stay with a conditional UPDATE in
date order (no overbooking, no deadlock between concurrent holds); the CHECK constraint
`held + sold <= total` backs it up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from kizuna.kit import idempotency
from kizuna.kit.db import Database
from kizuna.kit.errors import InvalidArgument, NotFound
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from travel import stay as rules
from travel.models import Booking, Hotel, NightInventory, RatePlan, RoomType

PENDING, FAILING, FAILED = "pending", "failing", "failed"
CONFIRMED, CANCELLING, CANCELLED, COMPLETED = "confirmed", "cancelling", "cancelled", "completed"
# Bookings that never went through: not the member's, not shown anywhere.
NOT_MADE = (PENDING, FAILING, FAILED)


@dataclass(frozen=True)
class BookingRequest:
    hotel_id: str
    room_type_id: str
    rate_plan_id: str
    check_in: date
    check_out: date
    guests: int
    points: int
    idempotency_key: str

    def fields(self) -> dict[str, Any]:
        """What the request asks for, without its key (its idempotency fingerprint)."""
        return {k: v for k, v in asdict(self).items() if k != "idempotency_key"}


class SoldOut(Exception):
    """A night of the stay has no room left."""

    def __init__(self, night: date) -> None:
        super().__init__(f"no room left on the night of {night}")
        self.night = night


class BookingStore:
    """Reads and writes bookings and the nights they hold."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, booking_id: str) -> Booking:
        async with self.db.sessions() as session:
            booking = await session.get(Booking, booking_id)
        if booking is None:
            raise NotFound(f"unknown booking {booking_id!r}")
        return booking

    async def for_member(self, member_id: str, *, offset: int = 0, limit: int = 50) -> list[Booking]:
        """The member's bookings (not the ones that never went through), newest first."""
        async with self.db.sessions() as session:
            rows = await session.exec(
                select(Booking)
                .where(Booking.member_id == member_id, col(Booking.status).not_in(NOT_MADE))
                .order_by(col(Booking.created_at).desc(), col(Booking.id).desc())
                .offset(offset)
                .limit(limit)
            )
            return list(rows.all())

    async def by_key(self, member_id: str, key: str) -> Booking | None:
        async with self.db.sessions() as session:
            rows = await session.exec(
                select(Booking).where(Booking.member_id == member_id, Booking.idempotency_key == key)
            )
            return rows.first()

    async def names(self, hotel_ids: set[str], room_ids: set[str], plan_ids: set[str]) -> dict[str, str]:
        """The catalogue's names of hotels, room types and rate plans by ID (the ID when gone)."""
        names: dict[str, str] = {}
        async with self.db.sessions() as session:
            for i in hotel_ids:
                hotel = await session.get(Hotel, i)
                names[i] = hotel.name if hotel else i
            for i in room_ids:
                room = await session.get(RoomType, i)
                names[i] = room.name if room else i
            for i in plan_ids:
                plan = await session.get(RatePlan, i)
                names[i] = plan.name if plan else i
        return names

    async def hold(self, member_id: str, request: BookingRequest, stay: rules.StayRequest, now: datetime) -> Booking:
        """A `pending/held` booking priced from the nights' rates, with every night held; `SoldOut`
        (nothing written) when a night has no room left."""
        async with self.db.transaction() as session:
            hotel = await session.get(Hotel, request.hotel_id)
            if hotel is None:
                raise NotFound(f"unknown hotel {request.hotel_id!r}")
            room = await session.get(RoomType, request.room_type_id)
            if room is None or room.hotel_id != hotel.id:
                raise NotFound(f"hotel {hotel.id!r} has no room type {request.room_type_id!r}")
            plan = await session.get(RatePlan, request.rate_plan_id)
            if plan is None or plan.hotel_id != hotel.id:
                raise NotFound(f"hotel {hotel.id!r} has no rate plan {request.rate_plan_id!r}")
            if stay.guests > room.max_guests:
                raise InvalidArgument(f"{room.name} sleeps at most {room.max_guests}; {stay.guests} guests asked")
            rows = await session.exec(
                select(NightInventory).where(
                    NightInventory.room_type_id == room.id,
                    col(NightInventory.night) >= stay.check_in,
                    col(NightInventory.night) < stay.check_out,
                )
            )
            rates = {row.night: row.rate_minor for row in rows.all()}
            missing = [n for n in stay.nights if n not in rates]
            if missing:
                raise InvalidArgument(f"{room.name} is not on sale for the night of {missing[0]}")
            total = rules.stay_price([rates[n] for n in stay.nights], plan.price_bp)
            points, card = rules.split_payment(total, request.points)
            booking = Booking(
                id=f"bkg_{ULID()}",
                member_id=member_id,
                idempotency_key=request.idempotency_key,
                request_hash=idempotency.fingerprint(request.fields()),
                hotel_id=hotel.id,
                room_type_id=room.id,
                rate_plan_id=plan.id,
                check_in=stay.check_in,
                check_out=stay.check_out,
                guests=stay.guests,
                total_minor=total,
                points_used=points,
                card_amount_minor=card,
                refundable=plan.refundable,
                free_cancel_days=plan.free_cancel_days,
                penalty_bp=plan.penalty_bp,
                status=PENDING,
                step="held",
                created_at=now,
                updated_at=now,
            )
            session.add(booking)
            await session.flush()
            # Nights in date order, so concurrent bookings lock rows in the same order (no deadlock).
            for night in stay.nights:
                result = await session.exec(
                    update(NightInventory)
                    .where(
                        col(NightInventory.room_type_id) == room.id,
                        col(NightInventory.night) == night,
                        col(NightInventory.total) - col(NightInventory.held) - col(NightInventory.sold) >= 1,
                    )
                    .values(held=col(NightInventory.held) + 1)
                )
                if result.rowcount != 1:
                    raise SoldOut(night)
            return booking

    async def remember_rejection(self, member_id: str, request: BookingRequest, reason: str, now: datetime) -> Booking:
        """Record a refused booking (nothing held) so that a retry of its key gets the same answer."""
        try:
            async with self.db.transaction() as session:
                booking = Booking(
                    id=f"bkg_{ULID()}",
                    member_id=member_id,
                    idempotency_key=request.idempotency_key,
                    request_hash=idempotency.fingerprint(request.fields()),
                    hotel_id=request.hotel_id,
                    room_type_id=request.room_type_id,
                    rate_plan_id=request.rate_plan_id,
                    check_in=request.check_in,
                    check_out=request.check_out,
                    guests=request.guests,
                    total_minor=0,
                    points_used=0,
                    card_amount_minor=0,
                    refundable=False,
                    free_cancel_days=0,
                    penalty_bp=0,
                    status=FAILED,
                    step="rejected",
                    failure_reason=reason,
                    created_at=now,
                    updated_at=now,
                )
                session.add(booking)
            return booking
        except IntegrityError:
            existing = await self.by_key(member_id, request.idempotency_key)
            if existing is None:
                raise
            return existing

    async def record(
        self, booking_id: str, now: datetime, *, expect_step: str | None, step: str | None, **fields: Any
    ) -> Booking:
        """Save what a saga step obtained (always) and move to `step` if the saga is still ours
        (status pending at `expect_step`). Returns the booking as saved."""
        async with self.db.transaction() as session:
            booking = await locked(session, booking_id)
            for name, value in fields.items():
                setattr(booking, name, value)
            if step is not None and booking.status == PENDING and booking.step == expect_step:
                booking.step = step
            booking.updated_at = now
            session.add(booking)
            return booking


async def locked(session: AsyncSession, booking_id: str) -> Booking:
    """The booking, locked for this transaction (FOR UPDATE) and read afresh."""
    booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
    if booking is None:
        raise NotFound(f"unknown booking {booking_id!r}")
    return booking


async def move_nights(session: AsyncSession, booking: Booking, *, held: int, sold: int) -> None:
    """Shift every night of the booking's stay between held, sold and free."""
    for night in rules.nights_between(booking.check_in, booking.check_out):
        await session.exec(
            update(NightInventory)
            .where(col(NightInventory.room_type_id) == booking.room_type_id, col(NightInventory.night) == night)
            .values(held=col(NightInventory.held) + held, sold=col(NightInventory.sold) + sold)
        )
