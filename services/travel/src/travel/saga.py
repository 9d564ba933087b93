"""Booking a stay as a saga (state in `Booking.status` / `Booking.step`, saved after every step):

  hold every night (one transaction, conditional UPDATE per night: no overbooking)
  -> reserve points (member's token + travel's token)   -> authorize the card
  -> capture points -> capture the card -> confirm (nights held -> sold, event)

Any failure compensates: void (or refund) what was reserved/authorized/captured, release the
nights, status `failed`. Every call to points and fintech carries an idempotency key derived from
the booking ID, so replays are harmless.
"""

from __future__ import annotations

import logging

import grpc
from kizuna.kit import idempotency
from kizuna.kit.clock import Clock
from kizuna.kit.errors import FailedPrecondition, Unavailable
from sqlalchemy.exc import IntegrityError

from travel import booking_events
from travel import stay as rules
from travel.booking_store import (
    CONFIRMED,
    FAILED,
    FAILING,
    PENDING,
    BookingRequest,
    BookingStore,
    SoldOut,
    locked,
    move_nights,
)
from travel.models import Booking
from travel.payment import PaymentError, PaymentGateway

log = logging.getLogger("travel.saga")


class _Superseded(Exception):
    """The recovery job took the booking over while this saga was waiting on a peer."""


def failure_message(booking: Booking) -> str:
    return f"booking {booking.id} was not made: {booking.failure_reason}"


class BookingSaga:
    """Hold, pay, confirm, or undo it all."""

    def __init__(
        self,
        store: BookingStore,
        payments: PaymentGateway,
        clock: Clock,
        *,
        max_stay_nights: int,
        reservation_ttl_seconds: int,
    ) -> None:
        self.store = store
        self.payments = payments
        self.clock = clock
        self.max_stay_nights = max_stay_nights
        self.reservation_ttl_seconds = reservation_ttl_seconds

    async def book(self, member_id: str, member_token: str, request: BookingRequest) -> Booking:
        """Hold, pay and confirm; returns the confirmed booking or raises with nothing left behind.

        A retry with the same idempotency key returns the first outcome."""
        idempotency.check_key(request.idempotency_key)
        existing = await self.store.by_key(member_id, request.idempotency_key)
        if existing is not None:
            return self._replay(existing, request)
        now = self.clock.now()
        stay = rules.validate_stay(
            request.check_in, request.check_out, request.guests, now=now, max_nights=self.max_stay_nights
        )
        try:
            booking = await self.store.hold(member_id, request, stay, now)
        except SoldOut as sold_out:
            booking = await self.store.remember_rejection(member_id, request, str(sold_out), self.clock.now())
            return self._replay(booking, request)
        except IntegrityError:
            # The same key raced us: the other attempt decides the outcome.
            existing = await self.store.by_key(member_id, request.idempotency_key)
            if existing is None:
                raise
            return self._replay(existing, request)
        return await self._pay_and_confirm(booking, member_token)

    @staticmethod
    def _replay(booking: Booking, request: BookingRequest) -> Booking:
        idempotency.ensure_same(booking.request_hash, request.fields(), request.idempotency_key)
        if booking.status in (FAILING, FAILED):
            raise FailedPrecondition(failure_message(booking))
        return booking

    async def _record(self, booking_id: str, *, expect_step: str | None, step: str | None, **fields: object) -> Booking:
        return await self.store.record(booking_id, self.clock.now(), expect_step=expect_step, step=step, **fields)

    async def _pay_and_confirm(self, booking: Booking, member_token: str) -> Booking:
        bid = booking.id
        try:
            booking = await self._pay_points_and_card(booking, member_token)
            if booking.points_used > 0:
                await self.payments.capture_points(reservation_id=booking.points_reservation_id, booking_id=bid)
                booking = await self._record(bid, expect_step=None, step=None, points_captured=True)
            if booking.card_amount_minor > 0:
                capture_id = await self.payments.capture_card(
                    authorization_id=booking.card_authorization_id, booking_id=bid
                )
                booking = await self._record(bid, expect_step=None, step=None, card_capture_id=capture_id)
            booking = await self._record(bid, expect_step="card_authorized", step="captured")
            _still_ours(booking, "captured")
        except PaymentError as exc:
            failed = await self.compensate(bid, exc.reason, member_token=member_token)
            raise FailedPrecondition(failure_message(failed)) from None
        except _Superseded:
            failed = await self.compensate(bid, "the booking timed out", member_token=member_token)
            raise FailedPrecondition(failure_message(failed)) from None
        confirmed = await self.confirm(bid)
        if confirmed.status != CONFIRMED:
            raise FailedPrecondition(failure_message(confirmed))
        return confirmed

    async def _pay_points_and_card(self, booking: Booking, member_token: str) -> Booking:
        """Reserve the points and authorize the card: the booking at step `card_authorized`."""
        bid = booking.id
        if booking.points_used > 0:
            reservation_id = await self.payments.reserve_points(
                member_id=booking.member_id,
                amount=booking.points_used,
                booking_id=bid,
                reason=f"Hotel booking {bid}",
                ttl_seconds=self.reservation_ttl_seconds,
                member_token=member_token,
            )
            booking = await self._record(
                bid, expect_step="held", step="points_reserved", points_reservation_id=reservation_id
            )
        else:
            booking = await self._record(bid, expect_step="held", step="points_reserved")
        _still_ours(booking, "points_reserved")
        if booking.card_amount_minor > 0:
            auth = await self.payments.authorize_card(
                member_id=booking.member_id,
                amount_minor=booking.card_amount_minor,
                currency=booking.currency,
                booking_id=bid,
                member_token=member_token,
            )
            if not auth.approved:
                await self._record(bid, expect_step="points_reserved", step="card_declined")
                raise PaymentError(f"card declined ({auth.decline_reason})")
            booking = await self._record(
                bid, expect_step="points_reserved", step="card_authorized", card_authorization_id=auth.authorization_id
            )
        else:
            booking = await self._record(bid, expect_step="points_reserved", step="card_authorized")
        _still_ours(booking, "card_authorized")
        return booking

    async def confirm(self, booking_id: str) -> Booking:
        """Sell the held nights and confirm a booking whose payment is captured (else unchanged)."""
        async with self.store.db.transaction() as session:
            booking = await locked(session, booking_id)
            if booking.status != PENDING or booking.step != "captured":
                return booking
            await move_nights(session, booking, held=-1, sold=+1)
            now = self.clock.now()
            booking.status, booking.step, booking.updated_at = CONFIRMED, "done", now
            session.add(booking)
            await booking_events.confirmed(session, booking, now)
            return booking

    async def compensate(self, booking_id: str, reason: str, *, member_token: str | None = None) -> Booking:
        """Undo a booking that cannot complete: return points and card holds, release the nights.

        Idempotent; if a peer cannot be reached the booking stays `failing` for the recovery job.
        Holds whose IDs never reached travel (a crash or timeout during Reserve/Authorize) are found by
        replaying the call with its idempotency key when the member's token is at hand; otherwise
        they lapse at their expiry in points and fintech (travel stores no member tokens)."""
        async with self.store.db.transaction() as session:
            booking = await locked(session, booking_id)
            if booking.status not in (PENDING, FAILING):
                return booking
            booking.status = FAILING
            booking.failure_reason = booking.failure_reason or reason
            booking.updated_at = self.clock.now()
            session.add(booking)
        try:
            await self._return_points(booking)
            await self._return_card(booking, member_token)
        except (PaymentError, Unavailable) as exc:
            log.warning("booking %s stays failing, the recovery job tries again: %s", booking_id, exc)
            return booking
        async with self.store.db.transaction() as session:
            booking = await locked(session, booking_id)
            if booking.status == FAILING:
                await move_nights(session, booking, held=-1, sold=0)
                booking.status, booking.updated_at = FAILED, self.clock.now()
                session.add(booking)
            return booking

    async def _return_points(self, booking: Booking) -> None:
        if not booking.points_reservation_id:
            return
        if not booking.points_captured:
            try:
                await self.payments.void_points(reservation_id=booking.points_reservation_id, booking_id=booking.id)
                return
            except PaymentError as exc:
                if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # Captured after all: refund it.
        await self.payments.refund_points(
            reservation_id=booking.points_reservation_id,
            amount=booking.points_used,
            booking_id=booking.id,
            purpose="undo",
            reason=f"Hotel booking {booking.id} not made",
        )

    async def _return_card(self, booking: Booking, member_token: str | None) -> None:
        bid = booking.id
        auth_id = booking.card_authorization_id
        if booking.card_amount_minor > 0 and not auth_id and booking.step == "points_reserved" and member_token:
            # Authorize may have gone through without us hearing the answer: its replay says.
            auth = await self.payments.authorize_card(
                member_id=booking.member_id,
                amount_minor=booking.card_amount_minor,
                currency=booking.currency,
                booking_id=bid,
                member_token=member_token,
            )
            auth_id = auth.authorization_id if auth.approved else ""
        if not auth_id:
            return
        if not booking.card_capture_id:
            try:
                await self.payments.void_card(authorization_id=auth_id, booking_id=bid)
                return
            except PaymentError as exc:
                if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # Captured after all: refund it.
        await self.payments.refund_card(
            authorization_id=auth_id,
            amount_minor=booking.card_amount_minor,
            currency=booking.currency,
            booking_id=bid,
            purpose="undo",
        )


def _still_ours(booking: Booking, step: str) -> None:
    if booking.status != PENDING or booking.step != step:
        raise _Superseded()
