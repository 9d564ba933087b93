"""What keeps bookings moving without a member: completing stays after check-out, and finishing or
undoing sagas that stopped (a crash, a peer away for a while)."""

from __future__ import annotations

from datetime import timedelta

from kizuna.kit.clock import Clock
from sqlmodel import col, select

from travel import booking_events
from travel import stay as rules
from travel.booking_store import CANCELLING, COMPLETED, CONFIRMED, FAILING, PENDING, BookingStore, locked
from travel.cancellation import Cancellations
from travel.models import Booking
from travel.saga import BookingSaga


class BookingJobs:
    def __init__(
        self,
        store: BookingStore,
        saga: BookingSaga,
        cancellations: Cancellations,
        clock: Clock,
        *,
        stuck_after_seconds: float,
    ) -> None:
        self.store = store
        self.saga = saga
        self.cancellations = cancellations
        self.clock = clock
        self.stuck_after = timedelta(seconds=stuck_after_seconds)

    async def complete_stays(self) -> int:
        """Complete every confirmed booking whose check-out time has passed; returns how many."""
        now = self.clock.now()
        async with self.store.db.sessions() as session:
            due = (
                await session.exec(
                    select(Booking.id).where(
                        Booking.status == CONFIRMED, col(Booking.check_out) <= rules.hotel_today(now)
                    )
                )
            ).all()
        done = 0
        for booking_id in due:
            async with self.store.db.transaction() as session:
                booking = await locked(session, booking_id)
                if booking.status != CONFIRMED or not rules.stay_ended(booking.check_out, now=now):
                    continue
                booking.status, booking.updated_at = COMPLETED, now
                session.add(booking)
                await booking_events.completed(session, booking, now)
                done += 1
        return done

    async def recover_stuck(self) -> int:
        """Finish or undo every saga that has not moved for a while (a crash, a lost peer)."""
        cutoff = self.clock.now() - self.stuck_after
        async with self.store.db.sessions() as session:
            stuck = (
                await session.exec(
                    select(Booking).where(
                        col(Booking.status).in_([PENDING, FAILING, CANCELLING]), col(Booking.updated_at) < cutoff
                    )
                )
            ).all()
        for booking in stuck:
            if booking.status == CANCELLING:
                await self.cancellations.finish(booking.id)
            elif booking.status == PENDING and booking.step == "captured":
                await self.saga.confirm(booking.id)
            else:
                await self.saga.compensate(booking.id, "the booking did not complete in time")
        return len(stuck)
