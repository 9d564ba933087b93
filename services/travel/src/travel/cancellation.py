"""Cancelling a confirmed booking under the rate plan it was booked on.

Free before the deadline, `penalty_bp` of the total after it; not possible once the check-in day
has begun. The penalty is kept from the card payment first, then from the points
(`stay.split_refund`); the rest goes back the way it was paid. Refund keys are per booking, so
finishing a cancellation again (the recovery job) refunds nothing twice.
"""

from __future__ import annotations

import logging
from datetime import datetime

from kizuna.kit.clock import Clock
from kizuna.kit.errors import FailedPrecondition, NotFound, Unavailable

from travel import booking_events
from travel import stay as rules
from travel.booking_store import CANCELLED, CANCELLING, CONFIRMED, BookingStore, locked, move_nights
from travel.models import Booking
from travel.payment import PaymentError, PaymentGateway

log = logging.getLogger("travel.cancellation")


def policy_of(booking: Booking) -> rules.CancellationPolicy:
    """The cancellation terms as booked (a later change to the plan does not touch the booking)."""
    return rules.CancellationPolicy(booking.refundable, booking.free_cancel_days, booking.penalty_bp)


def quote(booking: Booking, now: datetime) -> rules.Refund:
    """What cancelling at `now` would cost and return (the penalty from card first, then points)."""
    penalty = rules.cancellation_penalty(policy_of(booking), booking.check_in, booking.total_minor, now=now)
    return rules.split_refund(
        card_paid_minor=booking.card_amount_minor, points_used=booking.points_used, penalty_minor=penalty
    )


class Cancellations:
    def __init__(self, store: BookingStore, payments: PaymentGateway, clock: Clock) -> None:
        self.store = store
        self.payments = payments
        self.clock = clock

    async def cancel(self, member_id: str, booking_id: str) -> Booking:
        """Cancel under the booked rate plan; the refunds go back the way the member paid.
        Cancelling a cancelled booking returns it unchanged."""
        async with self.store.db.transaction() as session:
            booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
            if booking is None or booking.member_id != member_id:
                raise NotFound(f"unknown booking {booking_id!r}")
            if booking.status == CANCELLED:
                return booking
            if booking.status == CONFIRMED:
                now = self.clock.now()
                rules.check_cancellable(booking.check_in, now=now)
                refund = quote(booking, now)
                booking.status, booking.updated_at = CANCELLING, now
                booking.penalty_minor = refund.penalty_minor
                booking.card_refund_minor = refund.card_refund_minor
                booking.points_refund = refund.points_refund
                session.add(booking)
            elif booking.status != CANCELLING:
                raise FailedPrecondition(f"booking {booking_id} is {booking.status}; it cannot be cancelled")
        finished = await self.finish(booking_id)
        if finished.status != CANCELLED:
            raise Unavailable(f"booking {booking_id} is cancelled; its refunds are still in progress")
        return finished

    async def finish(self, booking_id: str) -> Booking:
        """Refund and release a cancelling booking; idempotent (refund keys are per booking)."""
        booking = await self.store.get(booking_id)
        if booking.status != CANCELLING:
            return booking
        try:
            if booking.points_refund > 0:
                await self.payments.refund_points(
                    reservation_id=booking.points_reservation_id,
                    amount=booking.points_refund,
                    booking_id=booking.id,
                    purpose="cancel",
                    reason=f"Hotel booking {booking.id} cancelled",
                )
            if booking.card_refund_minor > 0:
                await self.payments.refund_card(
                    authorization_id=booking.card_authorization_id,
                    amount_minor=booking.card_refund_minor,
                    currency=booking.currency,
                    booking_id=booking.id,
                    purpose="cancel",
                )
        except (PaymentError, Unavailable) as exc:
            log.warning("booking %s stays cancelling, the recovery job tries again: %s", booking_id, exc)
            return booking
        async with self.store.db.transaction() as session:
            booking = await locked(session, booking_id)
            if booking.status != CANCELLING:
                return booking
            await move_nights(session, booking, held=0, sold=-1)
            now = self.clock.now()
            booking.status, booking.step, booking.updated_at = CANCELLED, "done", now
            session.add(booking)
            await booking_events.cancelled(session, booking, now)
            return booking
