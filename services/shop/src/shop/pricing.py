"""The money rules of a checkout, pure: line totals, commission, campaign bonus, the points/card split,
the merchant's payout. A point is worth one minor unit of the order's currency (one yen)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kizuna.kit.errors import FailedPrecondition, InvalidArgument

MAX_QUANTITY = 999


@dataclass(frozen=True)
class PricedLine:
    product_id: str
    title: str
    quantity: int
    unit_price_minor: int
    currency: str

    @property
    def amount_minor(self) -> int:
        return self.unit_price_minor * self.quantity


@dataclass(frozen=True)
class CampaignRule:
    """A merchant's campaign: `extra_bp` basis points of a line's amount as extra points."""

    product_id: str | None
    extra_bp: int
    starts_at: datetime
    ends_at: datetime

    def applies(self, product_id: str, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at and self.product_id in (None, product_id)


@dataclass(frozen=True)
class Quote:
    lines: tuple[PricedLine, ...]
    total_minor: int
    currency: str
    points: int
    card_minor: int
    commission_minor: int
    bonus_points: int

    @property
    def merchant_payout_minor(self) -> int:
        return merchant_payout(self.total_minor, self.commission_minor, self.bonus_points)


def validate_quantity(quantity: int) -> int:
    if quantity <= 0:
        raise InvalidArgument(f"quantity must be at least 1 (got {quantity})")
    if quantity > MAX_QUANTITY:
        raise InvalidArgument(f"quantity must be at most {MAX_QUANTITY} (got {quantity})")
    return quantity


def commission(total_minor: int, rate_bp: int) -> int:
    """The platform's commission, rounded down to the minor unit (in the merchant's favour)."""
    return total_minor * rate_bp // 10_000


def merchant_payout(total_minor: int, commission_minor: int, bonus_points: int) -> int:
    """What the merchant is owed for an order: the total less the platform's commission and the
    campaign bonus it promised (the points are granted by points, the merchant pays for them)."""
    return total_minor - commission_minor - bonus_points


def campaign_bonus(lines: tuple[PricedLine, ...], campaigns: list[CampaignRule], at: datetime) -> int:
    """Extra points: per line, the best campaign that applies (campaigns do not stack), rounded down."""
    bonus = 0
    for line in lines:
        rates = [c.extra_bp for c in campaigns if c.applies(line.product_id, at)]
        if rates:
            bonus += line.amount_minor * max(rates) // 10_000
    return bonus


def unit_bonus(product_id: str, price_minor: int, currency: str, campaigns: list[CampaignRule], at: datetime) -> int:
    """The extra points one unit of a product earns from its merchant's campaigns now."""
    return campaign_bonus((PricedLine(product_id, "", 1, price_minor, currency),), campaigns, at)


def quote(
    lines: list[PricedLine],
    *,
    points: int,
    balance: int | None,
    commission_bp: int,
    campaigns: list[CampaignRule],
    at: datetime,
) -> Quote:
    """Price a checkout. Points may pay 0..min(balance, total); the card pays the rest."""
    if not lines:
        raise FailedPrecondition("the cart has nothing to check out")
    currencies = {line.currency for line in lines}
    if len(currencies) != 1:
        raise InvalidArgument(f"one checkout is paid in one currency; the cart mixes {sorted(currencies)}")
    for line in lines:
        validate_quantity(line.quantity)
    total = sum(line.amount_minor for line in lines)
    if points < 0:
        raise InvalidArgument(f"points must not be negative (got {points})")
    if points > total:
        raise InvalidArgument(f"points ({points}) exceed the order total ({total})")
    if balance is not None and points > balance:
        raise FailedPrecondition(f"points ({points}) exceed the member's balance ({balance})")
    frozen = tuple(lines)
    return Quote(
        lines=frozen,
        total_minor=total,
        currency=currencies.pop(),
        points=points,
        card_minor=total - points,
        commission_minor=commission(total, commission_bp),
        bonus_points=campaign_bonus(frozen, campaigns, at),
    )
