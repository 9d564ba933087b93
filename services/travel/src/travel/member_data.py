"""What travel holds about a member, and how it forgets them (kizuna.kit.privacy).

Export: every booking with its stay, price and payments. Erasure: sign-in sessions go; bookings
stay for the hotels' books and settlement, with the member ID replaced by a pseudonym that
cannot be traced back (a new random ID per erasure).
"""

from __future__ import annotations

from typing import Any

from kizuna.kit.oidc_client import WebSession
from kizuna.kit.privacy import Privacy
from sqlalchemy import update
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from travel.models import Booking

_EXPORTED = (
    "id",
    "hotel_id",
    "room_type_id",
    "rate_plan_id",
    "guests",
    "currency",
    "total_minor",
    "points_used",
    "card_amount_minor",
    "refundable",
    "status",
    "penalty_minor",
    "card_refund_minor",
    "points_refund",
)


async def export(session: AsyncSession, member_id: str) -> dict[str, Any]:
    bookings = (
        await session.exec(select(Booking).where(Booking.member_id == member_id).order_by(col(Booking.created_at)))
    ).all()
    return {
        "bookings": [
            {
                **{name: getattr(b, name) for name in _EXPORTED},
                "check_in": b.check_in.isoformat(),
                "check_out": b.check_out.isoformat(),
                "booked_at": b.created_at.isoformat(),
            }
            for b in bookings
        ]
    }


async def erase(session: AsyncSession, member_id: str) -> None:
    pseudonym = f"erased_{ULID()}"
    await session.exec(update(Booking).where(col(Booking.member_id) == member_id).values(member_id=pseudonym))
    await session.exec(delete(WebSession).where(col(WebSession.member_id) == member_id))


privacy = Privacy(export=export, erase=erase)
