"""The ledger's rules, pure: which lots a spend takes, what a capture returns, what a refund can
give back, what a clawback takes and leaves as debt, what a purchase earns. No I/O; the clock is
passed in, so tests control time.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kizuna.kit.errors import FailedPrecondition

REGULAR = "regular"
LIMITED_TIME = "limited_time"


class Clock:
    """Now, in UTC; tests move it with `advance` (a running service keeps one in runtime.state)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` plus calendar months, clamping the day (Jan 31 + 1 month = Feb 28/29)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def month_key(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


# ---- lots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LotState:
    id: int
    kind: str
    remaining: int
    expires_at: datetime


def spend_order(lots: Iterable[LotState]) -> list[LotState]:
    """Limited-time points first, then the soonest-expiring; oldest first among equals."""
    return sorted(lots, key=lambda lot: (lot.kind != LIMITED_TIME, lot.expires_at, lot.id))


def live(lots: Iterable[LotState], now: datetime) -> list[LotState]:
    return [lot for lot in lots if lot.remaining > 0 and lot.expires_at > now]


def allocate(lots: Iterable[LotState], amount: int, now: datetime) -> list[tuple[int, int]]:
    """Take `amount` from the live lots in spend order: [(lot id, points taken)]."""
    takes: list[tuple[int, int]] = []
    left = amount
    for lot in spend_order(live(lots, now)):
        if left == 0:
            break
        take = min(lot.remaining, left)
        takes.append((lot.id, take))
        left -= take
    if left > 0:
        raise FailedPrecondition(f"insufficient points: {amount} requested, {amount - left} available")
    return takes


@dataclass(frozen=True)
class HoldState:
    lot_id: int
    amount: int
    captured: int = 0
    refunded: int = 0
    lot_expires_at: datetime | None = None


def split_capture(holds: Sequence[HoldState], amount: int) -> list[tuple[int, int, int]]:
    """Capture `amount` of a reservation's holds (in their spend order): [(lot, captured, returned)]."""
    result = []
    left = amount
    for hold in holds:
        captured = min(hold.amount, left)
        left -= captured
        result.append((hold.lot_id, captured, hold.amount - captured))
    return result


def plan_refund(holds: Sequence[HoldState], amount: int, now: datetime) -> list[tuple[int, int, int]]:
    """Refund `amount` of the captured points, lot by lot in spend order: [(lot, returned, lost)];
    points of a lot that has expired meanwhile are lost (not returned)."""
    result = []
    left = amount
    for hold in holds:
        refundable = hold.captured - hold.refunded
        take = min(refundable, left)
        if take <= 0:
            continue
        left -= take
        expired = hold.lot_expires_at is not None and hold.lot_expires_at <= now
        result.append((hold.lot_id, 0, take) if expired else (hold.lot_id, take, 0))
    return result


@dataclass(frozen=True)
class ClawbackPlan:
    takes: list[tuple[int, int]]  # (lot id, points taken from it)
    debt: int


def plan_clawback(credited_lot: LotState, other_lots: Iterable[LotState], amount: int, now: datetime) -> ClawbackPlan:
    """Take back `amount`: from what is left of the credit's own lot, then from the member's other
    live lots in spend order; what the balance cannot cover becomes debt."""
    takes: list[tuple[int, int]] = []
    left = amount
    candidates = [credited_lot] if credited_lot.remaining > 0 and credited_lot.expires_at > now else []
    candidates += [lot for lot in spend_order(live(other_lots, now)) if lot.id != credited_lot.id]
    for lot in candidates:
        if left == 0:
            break
        take = min(lot.remaining, left)
        takes.append((lot.id, take))
        left -= take
    return ClawbackPlan(takes, left)


def clawable(amount: int, clawed_back: int, expired: int) -> int:
    """What a clawback can still take back of a credit's lot: what the member benefits from
    (kept, spent or repaying debt), not what was taken back already nor what expired."""
    return max(amount - clawed_back - expired, 0)


def repay_debt_first(
    returns: Sequence[tuple[int, int, datetime]], debt: int, now: datetime
) -> tuple[list[tuple[int, int]], int]:
    """Points coming back to the member (a released hold, what a capture did not take, a refund)
    repay debt before they can be spent again. `returns` are (lot id, points, lot's expiry) in spend
    order; points of a lot that expired meanwhile repay nothing (they go back and expire).
    Returns ([(lot id, points back into the lot)], points that repaid debt)."""
    back: list[tuple[int, int]] = []
    repaid = 0
    for lot_id, points, expires_at in returns:
        repay = min(points, debt - repaid) if expires_at > now else 0
        repaid += repay
        back.append((lot_id, points - repay))
    return back, repaid


def plan_credit(amount: int, debt: int) -> tuple[int, int]:
    """A credit repays debt first: (repaid, added to the new lot)."""
    repaid = min(amount, debt)
    return repaid, amount - repaid


# ---- earning ---------------------------------------------------------------------------------

# Minor units per currency unit; a point is worth one currency unit.
CURRENCY_EXPONENT = {"JPY": 0, "KRW": 0, "USD": 2, "EUR": 2, "GBP": 2}


def minor_per_unit(currency: str) -> int:
    exponent: int = CURRENCY_EXPONENT.get(currency.upper(), 0)
    return int(10**exponent)


def currency_units(amount_minor: int, currency: str) -> int:
    return amount_minor // minor_per_unit(currency)


def money_paid_minor(total_minor: int, points_used: int) -> int:
    """The part of a total paid in money, as the publishers split it (card = total - points used;
    the points used earn nothing)."""
    return max(total_minor - points_used, 0)


@dataclass(frozen=True)
class Campaign:
    """Extra points for purchases at `service` ("*": any) between starts_at and ends_at, paid as
    limited-time points expiring at points_expire_at."""

    name: str
    service: str
    starts_at: datetime
    ends_at: datetime
    points_expire_at: datetime
    extra_rate_bp: int = 0
    fixed_bonus: int = 0
    # x the service's base rate (2.0: the base once more, as limited-time points); 0: none.
    multiplier: float = 0.0

    def applies(self, service: str, at: datetime) -> bool:
        return self.service in ("*", service) and self.starts_at <= at < self.ends_at

    def extra_bp(self, base_bp: int) -> int:
        return self.extra_rate_bp + (round(base_bp * (self.multiplier - 1)) if self.multiplier > 1 else 0)


@dataclass(frozen=True)
class EarnRules:
    """Rates are in basis points of the purchase (100 bp = 1 point per 100 currency units)."""

    default_base_bp: int = 100
    base_bp: dict[str, int] = field(default_factory=dict)
    bonus_bp_per_service: int = 100
    max_bonus_services: int = 4
    cap_per_transaction: int = 10_000
    cap_per_month: int = 100_000
    campaigns: tuple[Campaign, ...] = ()
    # What members read for each service ("card" for fintech); a service without one by name.
    labels: dict[str, str] = field(default_factory=dict)

    def label(self, service: str) -> str:
        return self.labels.get(service, service)


@dataclass(frozen=True)
class EarnQuote:
    regular: int
    bonus: int
    bonus_expires_at: datetime | None
    rate_bp: int
    other_services: tuple[str, ...]
    explanation: str

    @property
    def total(self) -> int:
        return self.regular + self.bonus


def _pct(bp: int) -> str:
    return f"{bp / 100:g}%"


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def quote_earn(
    rules: EarnRules,
    service: str,
    units: int,
    services_used_this_month: Iterable[str],
    earned_this_month: int,
    at: datetime,
) -> EarnQuote:
    """What a purchase of `units` currency units at `service` earns now, and why."""
    base = rules.base_bp.get(service, rules.default_base_bp)
    others = tuple(sorted({s for s in services_used_this_month if s != service}))[: rules.max_bonus_services]
    extra = rules.bonus_bp_per_service * len(others)
    rate = base + extra
    regular = max(units, 0) * rate // 10_000
    parts = [f"{_pct(base)} base"]
    if others:
        parts.append(f"{_pct(extra)} for using {_join([rules.label(s) for s in others])} this month")
    bonus, bonus_expires = 0, None
    for campaign in rules.campaigns:
        if not campaign.applies(service, at):
            continue
        points = max(units, 0) * campaign.extra_bp(base) // 10_000 + campaign.fixed_bonus
        if points > 0:
            bonus += points
            bonus_expires = min(bonus_expires or campaign.points_expire_at, campaign.points_expire_at)
            parts.append(f"{points} limited-time points from {campaign.name}")
    explanation = " + ".join(parts)
    total = regular + bonus
    allowed = min(rules.cap_per_transaction, max(rules.cap_per_month - earned_this_month, 0))
    if total > allowed:
        cut = total - allowed
        bonus_cut = min(bonus, cut)
        bonus -= bonus_cut
        regular -= cut - bonus_cut
        which = "per purchase" if allowed == rules.cap_per_transaction else "per month"
        explanation += f" (capped at {allowed} points {which})"
    return EarnQuote(regular, bonus, bonus_expires if bonus else None, rate, others, explanation)


@dataclass(frozen=True)
class MonthRate:
    """What a purchase at `service` earns this month: `rate_bp` = base + bonus for the others used."""

    service: str
    rate_bp: int
    base_bp: int
    others: tuple[str, ...]

    @property
    def multiplier(self) -> float:
        return self.rate_bp / self.base_bp if self.base_bp else 1.0


def month_rates(rules: EarnRules, services: Iterable[str], used_this_month: Iterable[str]) -> list[MonthRate]:
    """This month's earn rate at each service, given the services the member used (the multiplier)."""
    used = set(used_this_month)
    rates = []
    for service in services:
        base = rules.base_bp.get(service, rules.default_base_bp)
        others = tuple(sorted(used - {service}))[: rules.max_bonus_services]
        rates.append(MonthRate(service, base + rules.bonus_bp_per_service * len(others), base, others))
    return rates


def proportion(points: int, part: int, whole: int) -> int:
    """The share of `points` that `part` of `whole` stands for, rounded down (never above points)."""
    if whole <= 0:
        return points
    return min(points, points * max(part, 0) // whole)


def refund_take_back(earned: int, taken_back: int, refunded_minor: int, purchase_minor: int) -> int:
    """Points a refund takes back, given what the purchase earned, the points taken back by earlier
    refunds and the money refunded so far (this refund included): the share of `earned` that all
    the refunded money stands for, less what was already taken. Computed on the cumulative refund
    so that rounding never adds up to less: refunding the whole purchase takes back `earned`."""
    return max(proportion(earned, refunded_minor, purchase_minor) - taken_back, 0)
