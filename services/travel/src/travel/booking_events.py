"""What travel tells the ecosystem about a booking, in the transaction of the change itself:
`travel.booking.confirmed|cancelled|completed` and the earning contract's purchase stages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from google.protobuf.message import Message
from kizuna.common.v1 import common_pb2
from kizuna.kit.clock import timestamp
from kizuna.kit.events import publish
from kizuna.kit.points import publish_purchase
from kizuna.travel.v1 import events_pb2
from sqlmodel.ext.asyncio.session import AsyncSession

from travel.models import Booking


def _date(d: date) -> common_pb2.Date:
    return common_pb2.Date(year=d.year, month=d.month, day=d.day)


def _money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency=currency)


async def confirmed(session: AsyncSession, booking: Booking, now: datetime) -> None:
    await _announce(
        session,
        booking,
        now,
        "travel.booking.confirmed",
        events_pb2.BookingConfirmed,
        "paid",
        room_type_id=booking.room_type_id,
        check_in=_date(booking.check_in),
        check_out=_date(booking.check_out),
        guests=booking.guests,
    )


async def cancelled(session: AsyncSession, booking: Booking, now: datetime) -> None:
    await _announce(
        session,
        booking,
        now,
        "travel.booking.cancelled",
        events_pb2.BookingCancelled,
        "cancelled",
        penalty=_money(booking.penalty_minor, booking.currency),
        refunded=_money(booking.card_refund_minor, booking.currency),
        points_refunded=booking.points_refund,
    )


async def completed(session: AsyncSession, booking: Booking, now: datetime) -> None:
    await _announce(session, booking, now, "travel.booking.completed", events_pb2.BookingCompleted, "completed")


async def _announce(
    session: AsyncSession,
    booking: Booking,
    now: datetime,
    subject: str,
    event: Callable[..., Message],
    stage: str,
    **details: Any,
) -> None:
    """Stage the booking's event on `subject` (the fields every booking event carries, and the
    event's own `details`) and the matching stage of the earning contract."""
    message = event(
        booking_id=booking.id,
        member_id=booking.member_id,
        hotel_id=booking.hotel_id,
        total=_money(booking.total_minor, booking.currency),
        points_used=booking.points_used,
        occurred_at=timestamp(now),
        **details,
    )
    await publish(session, subject, message, member_id=booking.member_id)
    await _purchase(session, booking, stage, now)


async def _purchase(session: AsyncSession, booking: Booking, stage: str, now: datetime) -> None:
    """The booking as a step of the earning contract: it earns on the money paid (the total less
    the points used), pending from confirmation, granted once the stay is completed."""
    await publish_purchase(
        session,
        "travel",
        stage,
        reference=booking.id,
        member_id=booking.member_id,
        paid_minor=max(booking.total_minor - booking.points_used, 0),
        currency=booking.currency,
        points_used=booking.points_used,
        label=f"booking {booking.id}",
        category="hotel",
        at=now,
    )
