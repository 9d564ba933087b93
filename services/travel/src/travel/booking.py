"""Booking a stay as a saga, cancelling it under its rate plan, and completing it after check-out.

The saga (state in `Booking.status` / `Booking.step`, saved after every step):

  hold every night (one transaction, conditional UPDATE per night: no overbooking)
  -> reserve points (member's token + travel's token)   -> authorize the card
  -> capture points -> capture the card -> confirm (nights held -> sold, event)

Any failure compensates: void (or refund) what was reserved/authorized/captured, release the
nights, status `failed`. A booking whose saga stops moving (a crash) is finished or undone by
`recover_stuck()`. Every call to points and fintech carries an idempotency key derived from the
booking ID, so replays are harmless.

Penalty rule on cancellation: the penalty is kept from the card payment first, then from the
points (see `stay.split_refund`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.common.v1 import common_pb2
from kizuna.kit import idempotency
from kizuna.kit.clock import Clock
from kizuna.kit.db import Database
from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from kizuna.kit.events import publish
from kizuna.kit.points import publish_purchase
from kizuna.travel.v1 import events_pb2
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from travel import stay as rules
from travel.models import Booking, Hotel, NightInventory, RatePlan, RoomType
from travel.payment import PaymentError, PaymentGateway

PENDING, FAILING, FAILED = "pending", "failing", "failed"
CONFIRMED, CANCELLING, CANCELLED, COMPLETED = "confirmed", "cancelling", "cancelled", "completed"


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


class _SoldOut(Exception):
    def __init__(self, night: date) -> None:
        self.night = night


def _date(d: date) -> common_pb2.Date:
    return common_pb2.Date(year=d.year, month=d.month, day=d.day)


def _ts(t: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(t)
    return ts


def _money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency=currency)


def failure_message(booking: Booking) -> str:
    return f"booking {booking.id} was not made: {booking.failure_reason}"


class Bookings:
    """The booking saga and the jobs that keep it moving."""

    def __init__(
        self,
        db: Database,
        payments: PaymentGateway,
        *,
        max_stay_nights: int = 14,
        reservation_ttl_seconds: int = 900,
        stuck_after_seconds: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.payments = payments
        self.max_stay_nights = max_stay_nights
        self.reservation_ttl_seconds = reservation_ttl_seconds
        self.stuck_after = timedelta(seconds=stuck_after_seconds)
        self.clock = clock or Clock()

    async def aclose(self) -> None:
        await self.payments.close()

    # ---- reading ------------------------------------------------------------------------------
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
                .where(Booking.member_id == member_id, col(Booking.status).not_in([PENDING, FAILING, FAILED]))
                .order_by(col(Booking.created_at).desc(), col(Booking.id).desc())
                .offset(offset)
                .limit(limit)
            )
            return list(rows.all())

    # ---- booking ------------------------------------------------------------------------------
    async def book(self, member_id: str, member_token: str, request: BookingRequest) -> Booking:
        """Hold, pay and confirm; returns the confirmed booking or raises with nothing left behind.

        A retry with the same idempotency key returns the first outcome."""
        idempotency.check_key(request.idempotency_key)
        existing = await self._by_key(member_id, request.idempotency_key)
        if existing is not None:
            return self._replay(existing, request)
        now = self.clock.now()
        stay = rules.validate_stay(
            request.check_in, request.check_out, request.guests, now=now, max_nights=self.max_stay_nights
        )
        try:
            booking = await self._hold(member_id, request, stay, now)
        except _SoldOut as sold_out:
            booking = await self._remember_rejection(
                member_id, request, f"no room left on the night of {sold_out.night}"
            )
            return self._replay(booking, request)
        except IntegrityError:
            # The same key raced us: the other attempt decides the outcome.
            existing = await self._by_key(member_id, request.idempotency_key)
            if existing is None:
                raise
            return self._replay(existing, request)
        return await self._pay_and_confirm(booking, member_token)

    async def _by_key(self, member_id: str, key: str) -> Booking | None:
        async with self.db.sessions() as session:
            rows = await session.exec(
                select(Booking).where(Booking.member_id == member_id, Booking.idempotency_key == key)
            )
            return rows.first()

    def _replay(self, booking: Booking, request: BookingRequest) -> Booking:
        idempotency.ensure_same(booking.request_hash, request.fields(), request.idempotency_key)
        if booking.status in (FAILING, FAILED):
            raise FailedPrecondition(failure_message(booking))
        return booking

    async def _hold(self, member_id: str, request: BookingRequest, stay: rules.StayRequest, now: datetime) -> Booking:
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
            rates = dict(
                (
                    await session.exec(
                        select(NightInventory.night, NightInventory.rate_minor).where(
                            NightInventory.room_type_id == room.id,
                            col(NightInventory.night) >= stay.check_in,
                            col(NightInventory.night) < stay.check_out,
                        )
                    )
                ).all()
            )
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
                    raise _SoldOut(night)
            return booking

    async def _remember_rejection(self, member_id: str, request: BookingRequest, reason: str) -> Booking:
        """Record a refused booking (nothing held) so that a retry of its key gets the same answer."""
        now = self.clock.now()
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
            existing = await self._by_key(member_id, request.idempotency_key)
            if existing is None:
                raise
            return existing

    async def _record(self, booking_id: str, *, expect_step: str | None, step: str | None, **fields: Any) -> Booking:
        """Save what a saga step obtained (always) and move to `step` if the saga is still ours
        (status pending at `expect_step`). Returns the booking as saved."""
        async with self.db.transaction() as session:
            booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
            assert booking is not None
            for name, value in fields.items():
                setattr(booking, name, value)
            if step is not None and booking.status == PENDING and booking.step == expect_step:
                booking.step = step
            booking.updated_at = self.clock.now()
            session.add(booking)
            return booking

    async def _pay_and_confirm(self, booking: Booking, member_token: str) -> Booking:
        bid = booking.id
        try:
            step = "held"
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
                    bid, expect_step=step, step="points_reserved", points_reservation_id=reservation_id
                )
            else:
                booking = await self._record(bid, expect_step=step, step="points_reserved")
            step = "points_reserved"
            self._still_ours(booking, step)
            if booking.card_amount_minor > 0:
                auth = await self.payments.authorize_card(
                    member_id=booking.member_id,
                    amount_minor=booking.card_amount_minor,
                    currency=booking.currency,
                    booking_id=bid,
                    member_token=member_token,
                )
                if not auth.approved:
                    await self._record(bid, expect_step=step, step="card_declined")
                    raise PaymentError(f"card declined ({auth.decline_reason})")
                booking = await self._record(
                    bid, expect_step=step, step="card_authorized", card_authorization_id=auth.authorization_id
                )
            else:
                booking = await self._record(bid, expect_step=step, step="card_authorized")
            step = "card_authorized"
            self._still_ours(booking, step)
            if booking.points_used > 0:
                await self.payments.capture_points(reservation_id=booking.points_reservation_id, booking_id=bid)
                booking = await self._record(bid, expect_step=None, step=None, points_captured=True)
            if booking.card_amount_minor > 0:
                capture_id = await self.payments.capture_card(
                    authorization_id=booking.card_authorization_id, booking_id=bid
                )
                booking = await self._record(bid, expect_step=None, step=None, card_capture_id=capture_id)
            booking = await self._record(bid, expect_step=step, step="captured")
            self._still_ours(booking, "captured")
        except PaymentError as exc:
            failed = await self.compensate(bid, exc.reason, member_token=member_token)
            raise FailedPrecondition(failure_message(failed)) from None
        except _Superseded:
            failed = await self.compensate(bid, "the booking timed out", member_token=member_token)
            raise FailedPrecondition(failure_message(failed)) from None
        confirmed = await self._confirm(bid)
        if confirmed.status != CONFIRMED:
            raise FailedPrecondition(failure_message(confirmed))
        return confirmed

    @staticmethod
    def _still_ours(booking: Booking, step: str) -> None:
        if booking.status != PENDING or booking.step != step:
            raise _Superseded()

    async def _confirm(self, booking_id: str) -> Booking:
        async with self.db.transaction() as session:
            booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
            assert booking is not None
            if booking.status != PENDING or booking.step != "captured":
                return booking
            await _move_nights(session, booking, held=-1, sold=+1)
            now = self.clock.now()
            booking.status, booking.step, booking.updated_at = CONFIRMED, "done", now
            session.add(booking)
            publish(
                session,
                "travel.booking.confirmed",
                events_pb2.BookingConfirmed(
                    booking_id=booking.id,
                    member_id=booking.member_id,
                    hotel_id=booking.hotel_id,
                    room_type_id=booking.room_type_id,
                    check_in=_date(booking.check_in),
                    check_out=_date(booking.check_out),
                    guests=booking.guests,
                    total=_money(booking.total_minor, booking.currency),
                    points_used=booking.points_used,
                    occurred_at=_ts(now),
                ),
                member_id=booking.member_id,
            )
            _publish_purchase(session, booking, "paid", now)
            return booking

    async def compensate(self, booking_id: str, reason: str, *, member_token: str | None = None) -> Booking:
        """Undo a booking that cannot complete: return points and card holds, release the nights.

        Idempotent; if a peer cannot be reached the booking stays `failing` for the recovery job.
        Holds whose IDs never reached travel (a crash or timeout during Reserve/Authorize) are found by
        replaying the call with its idempotency key when the member's token is at hand; otherwise
        they lapse at their expiry in points and fintech (travel stores no member tokens)."""
        async with self.db.transaction() as session:
            booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
            assert booking is not None
            if booking.status not in (PENDING, FAILING):
                return booking
            booking.status = FAILING
            booking.failure_reason = booking.failure_reason or reason
            booking.updated_at = self.clock.now()
            session.add(booking)
        bid = booking.id
        try:
            if booking.points_reservation_id:
                if booking.points_captured:
                    await self._refund_points(booking, booking.points_used, "undo")
                else:
                    try:
                        await self.payments.void_points(reservation_id=booking.points_reservation_id, booking_id=bid)
                    except PaymentError as exc:
                        if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                            raise
                        await self._refund_points(booking, booking.points_used, "undo")  # captured after all
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
            if booking.card_capture_id:
                await self._refund_card(booking, booking.card_amount_minor, "undo")
            elif auth_id:
                try:
                    await self.payments.void_card(authorization_id=auth_id, booking_id=bid)
                except PaymentError as exc:
                    if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
                    await self.payments.refund_card(
                        authorization_id=auth_id,
                        amount_minor=booking.card_amount_minor,
                        currency=booking.currency,
                        booking_id=bid,
                        purpose="undo",
                    )
        except (PaymentError, Unavailable):
            return booking  # stays failing; recover_stuck() tries again
        async with self.db.transaction() as session:
            booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
            assert booking is not None
            if booking.status == FAILING:
                await _move_nights(session, booking, held=-1, sold=0)
                booking.status, booking.updated_at = FAILED, self.clock.now()
                session.add(booking)
            return booking

    async def _refund_points(self, booking: Booking, amount: int, purpose: str) -> None:
        await self.payments.refund_points(
            reservation_id=booking.points_reservation_id,
            amount=amount,
            booking_id=booking.id,
            purpose=purpose,
            reason=f"Hotel booking {booking.id} {'cancelled' if purpose == 'cancel' else 'not made'}",
        )

    async def _refund_card(self, booking: Booking, amount: int, purpose: str) -> None:
        await self.payments.refund_card(
            authorization_id=booking.card_authorization_id,
            amount_minor=amount,
            currency=booking.currency,
            booking_id=booking.id,
            purpose=purpose,
        )

    # ---- cancelling ---------------------------------------------------------------------------
    def quote_cancellation(self, booking: Booking, now: datetime | None = None) -> rules.Refund:
        """What cancelling now would cost and return (the penalty from card first, then points)."""
        policy = rules.CancellationPolicy(booking.refundable, booking.free_cancel_days, booking.penalty_bp)
        penalty = rules.cancellation_penalty(policy, booking.check_in, booking.total_minor, now=now or self.clock.now())
        return rules.split_refund(
            card_paid_minor=booking.card_amount_minor, points_used=booking.points_used, penalty_minor=penalty
        )

    async def cancel(self, member_id: str, booking_id: str) -> Booking:
        """Cancel under the booked rate plan; the refunds go back the way the member paid.
        Cancelling a cancelled booking returns it unchanged."""
        async with self.db.transaction() as session:
            booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
            if booking is None or booking.member_id != member_id:
                raise NotFound(f"unknown booking {booking_id!r}")
            if booking.status == CANCELLED:
                return booking
            if booking.status == CONFIRMED:
                now = self.clock.now()
                rules.check_cancellable(booking.check_in, now=now)
                refund = self.quote_cancellation(booking, now)
                booking.status, booking.updated_at = CANCELLING, now
                booking.penalty_minor = refund.penalty_minor
                booking.card_refund_minor = refund.card_refund_minor
                booking.points_refund = refund.points_refund
                session.add(booking)
            elif booking.status != CANCELLING:
                raise FailedPrecondition(f"booking {booking_id} is {booking.status}; it cannot be cancelled")
        finished = await self.finish_cancellation(booking_id)
        if finished.status != CANCELLED:
            raise Unavailable(f"booking {booking_id} is cancelled; its refunds are still in progress")
        return finished

    async def finish_cancellation(self, booking_id: str) -> Booking:
        """Refund and release a cancelling booking; idempotent (refund keys are per booking)."""
        booking = await self.get(booking_id)
        if booking.status != CANCELLING:
            return booking
        try:
            if booking.points_refund > 0:
                await self._refund_points(booking, booking.points_refund, "cancel")
            if booking.card_refund_minor > 0:
                await self._refund_card(booking, booking.card_refund_minor, "cancel")
        except (PaymentError, Unavailable):
            return booking
        async with self.db.transaction() as session:
            booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
            assert booking is not None
            if booking.status != CANCELLING:
                return booking
            await _move_nights(session, booking, held=0, sold=-1)
            now = self.clock.now()
            booking.status, booking.step, booking.updated_at = CANCELLED, "done", now
            session.add(booking)
            publish(
                session,
                "travel.booking.cancelled",
                events_pb2.BookingCancelled(
                    booking_id=booking.id,
                    member_id=booking.member_id,
                    hotel_id=booking.hotel_id,
                    total=_money(booking.total_minor, booking.currency),
                    points_used=booking.points_used,
                    penalty=_money(booking.penalty_minor, booking.currency),
                    refunded=_money(booking.card_refund_minor, booking.currency),
                    points_refunded=booking.points_refund,
                    occurred_at=_ts(now),
                ),
                member_id=booking.member_id,
            )
            _publish_purchase(session, booking, "cancelled", now)
            return booking

    # ---- jobs ---------------------------------------------------------------------------------
    async def complete_stays(self) -> int:
        """Complete every confirmed booking whose check-out time has passed; returns how many."""
        now = self.clock.now()
        async with self.db.sessions() as session:
            due = (
                await session.exec(
                    select(Booking.id).where(
                        Booking.status == CONFIRMED, col(Booking.check_out) <= rules.hotel_today(now)
                    )
                )
            ).all()
        done = 0
        for booking_id in due:
            async with self.db.transaction() as session:
                booking = await session.get(Booking, booking_id, with_for_update=True, populate_existing=True)
                if booking is None or booking.status != CONFIRMED or not rules.stay_ended(booking.check_out, now=now):
                    continue
                booking.status, booking.updated_at = COMPLETED, now
                session.add(booking)
                publish(
                    session,
                    "travel.booking.completed",
                    events_pb2.BookingCompleted(
                        booking_id=booking.id,
                        member_id=booking.member_id,
                        hotel_id=booking.hotel_id,
                        total=_money(booking.total_minor, booking.currency),
                        points_used=booking.points_used,
                        occurred_at=_ts(now),
                    ),
                    member_id=booking.member_id,
                )
                _publish_purchase(session, booking, "completed", now)
                done += 1
        return done

    async def recover_stuck(self) -> int:
        """Finish or undo every saga that has not moved for a while (a crash, a lost peer)."""
        cutoff = self.clock.now() - self.stuck_after
        async with self.db.sessions() as session:
            stuck = (
                await session.exec(
                    select(Booking).where(
                        col(Booking.status).in_([PENDING, FAILING, CANCELLING]), col(Booking.updated_at) < cutoff
                    )
                )
            ).all()
        for booking in stuck:
            if booking.status == CANCELLING:
                await self.finish_cancellation(booking.id)
            elif booking.status == PENDING and booking.step == "captured":
                await self._confirm(booking.id)
            else:
                await self.compensate(booking.id, "the booking did not complete in time")
        return len(stuck)


class _Superseded(Exception):
    """The recovery job took the booking over while this saga was waiting on a peer."""


async def _move_nights(session: AsyncSession, booking: Booking, *, held: int, sold: int) -> None:
    for night in rules.nights_between(booking.check_in, booking.check_out):
        await session.exec(
            update(NightInventory)
            .where(col(NightInventory.room_type_id) == booking.room_type_id, col(NightInventory.night) == night)
            .values(held=col(NightInventory.held) + held, sold=col(NightInventory.sold) + sold)
        )


def _publish_purchase(session: AsyncSession, booking: Booking, stage: str, now: datetime) -> None:
    """The booking as a step of the earning contract: it earns on the money paid (the total less
    the points used), pending from confirmation, granted once the stay is completed."""
    publish_purchase(
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
