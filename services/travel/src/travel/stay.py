"""The rules of a hotel stay, as plain values: nights, price, availability and cancellation.

No I/O here. Dates are the hotel's local calendar (every seeded hotel is in Japan); instants are
timezone-aware UTC and always passed in (`now`), so tests control the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from kizuna.kit.errors import InvalidArgument

HOTEL_TZ = ZoneInfo("Asia/Tokyo")
CURRENCY = "JPY"
BASIS_POINTS = 10_000
# A stay ends (and is completed) at the hotel's check-out time on the check-out day.
CHECK_OUT_TIME = time(11, 0)
# Bookings open this many days ahead at most (the seeded inventory horizon bounds it too).
MAX_DAYS_AHEAD = 365


@dataclass(frozen=True)
class StayRequest:
    """What a member asks for: validated, so later code can trust it."""

    check_in: date
    check_out: date
    guests: int

    @property
    def nights(self) -> list[date]:
        return nights_between(self.check_in, self.check_out)


def hotel_today(now: datetime) -> date:
    """The calendar day at the hotels at instant `now`."""
    return now.astimezone(HOTEL_TZ).date()


def nights_between(check_in: date, check_out: date) -> list[date]:
    """Every night of a stay: check_in up to, not including, check_out."""
    return [check_in + timedelta(days=i) for i in range((check_out - check_in).days)]


def validate_stay(check_in: date, check_out: date, guests: int, *, now: datetime, max_nights: int) -> StayRequest:
    """A stay that can be searched or booked at `now`, or `InvalidArgument` saying what is wrong."""
    if check_out <= check_in:
        raise InvalidArgument(f"check-out ({check_out}) must be after check-in ({check_in})")
    today = hotel_today(now)
    if check_in < today:
        raise InvalidArgument(f"check-in {check_in} is in the past (today is {today} at the hotel)")
    if check_in > today + timedelta(days=MAX_DAYS_AHEAD):
        raise InvalidArgument(f"check-in {check_in} is more than {MAX_DAYS_AHEAD} days ahead")
    nights = (check_out - check_in).days
    if nights > max_nights:
        raise InvalidArgument(f"a stay is at most {max_nights} nights; {nights} asked")
    if guests < 1:
        raise InvalidArgument("guests must be at least 1")
    return StayRequest(check_in, check_out, guests)


def parse_date(value: str, what: str) -> date:
    """An ISO date (YYYY-MM-DD) from a request, or `InvalidArgument` naming the field."""
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be a date as YYYY-MM-DD, got {value!r}") from None


# ---- price ----------------------------------------------------------------------------------


def night_price(rate_minor: int, plan_price_bp: int) -> int:
    """One night under a rate plan: the night's rate scaled by the plan (10000 = the rate itself).

    Rounded down to the yen, so the member never pays a fraction above the shown rate.
    """
    return rate_minor * plan_price_bp // BASIS_POINTS


def stay_price(night_rates: Sequence[int], plan_price_bp: int) -> int:
    """The total of a stay: the sum of its nights' prices (integer minor units)."""
    return sum(night_price(rate, plan_price_bp) for rate in night_rates)


# ---- availability ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NightInventory:
    night: date
    total: int
    held: int
    sold: int
    rate_minor: int

    @property
    def free(self) -> int:
        return max(self.total - self.held - self.sold, 0)


def rooms_free(stay: StayRequest, inventory: Sequence[NightInventory]) -> int:
    """Rooms bookable for every night of the stay: the smallest number free on any night
    (0 when a night has no inventory row at all)."""
    by_night = {row.night: row for row in inventory}
    return min((by_night[n].free if n in by_night else 0) for n in stay.nights)


# ---- cancellation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CancellationPolicy:
    """A rate plan's terms. Refundable plans cancel free until the deadline (`free_days` days before
    check-in, at 00:00 hotel time), then cost `penalty_bp` of the total; non-refundable plans cost
    `penalty_bp` (normally all of it) from the moment of booking."""

    refundable: bool
    free_days: int
    penalty_bp: int

    def deadline(self, check_in: date) -> datetime | None:
        """The last instant of free cancellation (UTC), or None when there is none."""
        if not self.refundable:
            return None
        local = datetime.combine(check_in - timedelta(days=self.free_days), time(0, 0), HOTEL_TZ)
        return local.astimezone(UTC)


def cancellation_penalty(policy: CancellationPolicy, check_in: date, total_minor: int, *, now: datetime) -> int:
    """What cancelling at `now` costs, in minor units (never more than the total)."""
    deadline = policy.deadline(check_in)
    if deadline is not None and now < deadline:
        return 0
    return min(total_minor * policy.penalty_bp // BASIS_POINTS, total_minor)


def check_cancellable(check_in: date, *, now: datetime) -> None:
    """A booking can be cancelled until its check-in day begins at the hotel."""
    if hotel_today(now) >= check_in:
        raise InvalidArgument("the stay has begun; it can no longer be cancelled")


@dataclass(frozen=True)
class Refund:
    """How a cancellation settles: the penalty kept, and what goes back by card and in points."""

    penalty_minor: int
    card_refund_minor: int
    points_refund: int


def split_refund(*, card_paid_minor: int, points_used: int, penalty_minor: int) -> Refund:
    """The penalty is kept from the card payment first, then from the points (1 point = 1 yen);
    everything else returns the way it was paid. Nothing is lost: card refund + points refund +
    penalty == card paid + points used."""
    penalty = min(penalty_minor, card_paid_minor + points_used)
    from_card = min(penalty, card_paid_minor)
    from_points = penalty - from_card
    return Refund(penalty, card_paid_minor - from_card, points_used - from_points)


def split_payment(total_minor: int, points: int) -> tuple[int, int]:
    """(points applied, card amount) for a booking; `InvalidArgument` for an impossible split."""
    if points < 0:
        raise InvalidArgument("points to use cannot be negative")
    if points > total_minor:
        raise InvalidArgument(f"at most {total_minor} points can be used on this booking; {points} asked")
    return points, total_minor - points


def stay_ended(check_out: date, *, now: datetime) -> bool:
    """Whether the stay is over: the check-out time on the check-out day has passed."""
    return now >= datetime.combine(check_out, CHECK_OUT_TIME, HOTEL_TZ)
