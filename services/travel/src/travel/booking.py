"""Travel's bookings as one context for the routes, the gRPC API and the jobs.

The work is done by the parts, each of one concern:

- `booking_store.BookingStore`: reading bookings, holding nights, recording saga steps;
- `saga.BookingSaga`: hold -> reserve points -> authorize card -> capture -> confirm, or undo it all;
- `cancellation.Cancellations`: cancelling under the booked rate plan, refunds the way it was paid;
- `booking_jobs.BookingJobs`: completing stays after check-out, finishing or undoing stuck sagas;
- `booking_events`: the events of each change, in its transaction;
- the kit's `EarnPreviews`: what a stay would earn, as the pages show it.
"""

from __future__ import annotations

from datetime import datetime

from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.earn_preview import EarnPreviews
from kizuna.kit.errors import NotFound

from travel import cancellation
from travel import stay as rules
from travel.booking_jobs import BookingJobs
from travel.booking_store import NOT_MADE, BookingRequest, BookingStore
from travel.cancellation import Cancellations
from travel.models import Booking
from travel.payment import PaymentGateway
from travel.saga import BookingSaga

__all__ = ["BookingRequest", "Bookings"]


class Bookings:
    """The booking saga, cancellations and the jobs that keep them moving, on one clock (and the
    pages' earn previews, on the same points client)."""

    def __init__(
        self,
        db: Database,
        payments: PaymentGateway,
        *,
        max_stay_nights: int = 14,
        reservation_ttl_seconds: int = 900,
        stuck_after_seconds: float = 60.0,
        earn: EarnPreviews,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.payments = payments
        self.earn = earn
        self.max_stay_nights = max_stay_nights
        self.store = BookingStore(db)
        self.saga = BookingSaga(
            self.store,
            payments,
            self.clock,
            max_stay_nights=max_stay_nights,
            reservation_ttl_seconds=reservation_ttl_seconds,
        )
        self.cancellations = Cancellations(self.store, payments, self.clock)
        self.jobs = BookingJobs(
            self.store, self.saga, self.cancellations, self.clock, stuck_after_seconds=stuck_after_seconds
        )

    async def aclose(self) -> None:
        await self.payments.close()

    # ---- reading ------------------------------------------------------------------------------
    async def get(self, booking_id: str) -> Booking:
        return await self.store.get(booking_id)

    async def of_member(self, member_id: str, booking_id: str) -> Booking:
        """The member's own booking; `NotFound` for another member's and for one never made."""
        booking = await self.store.get(booking_id)
        if booking.member_id != member_id or booking.status in NOT_MADE:
            raise NotFound(f"unknown booking {booking_id!r}")
        return booking

    async def for_member(self, member_id: str, *, offset: int = 0, limit: int = 50) -> list[Booking]:
        return await self.store.for_member(member_id, offset=offset, limit=limit)

    async def names(self, bookings: list[Booking]) -> dict[str, str]:
        """The names of the bookings' hotels, room types and rate plans by ID."""
        return await self.store.names(
            {b.hotel_id for b in bookings}, {b.room_type_id for b in bookings}, {b.rate_plan_id for b in bookings}
        )

    def parse_stay(self, check_in: str, check_out: str, guests: int) -> rules.StayRequest:
        """A stay from a request's dates, validated against today at the hotels."""
        return rules.validate_stay(
            rules.parse_date(check_in, "check_in"),
            rules.parse_date(check_out, "check_out"),
            guests,
            now=self.clock.now(),
            max_nights=self.max_stay_nights,
        )

    # ---- booking and cancelling ---------------------------------------------------------------
    async def book(self, member_id: str, member_token: str, request: BookingRequest) -> Booking:
        return await self.saga.book(member_id, member_token, request)

    def quote_cancellation(self, booking: Booking, now: datetime | None = None) -> rules.Refund:
        return cancellation.quote(booking, now or self.clock.now())

    async def cancel(self, member_id: str, booking_id: str) -> Booking:
        return await self.cancellations.cancel(member_id, booking_id)

    # ---- jobs ---------------------------------------------------------------------------------
    async def complete_stays(self) -> int:
        return await self.jobs.complete_stays()

    async def recover_stuck(self) -> int:
        return await self.jobs.recover_stuck()
