"""The money rules of a checkout, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kizuna.kit.errors import FailedPrecondition, InvalidArgument
from shop.pricing import CampaignRule, PricedLine, campaign_bonus, commission, quote

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def line(pid: str = "p1", qty: int = 1, price: int = 1000, currency: str = "JPY") -> PricedLine:
    return PricedLine(pid, pid, qty, price, currency)


def test_points_pay_up_to_the_smaller_of_balance_and_total_and_the_card_pays_the_rest() -> None:
    q = quote([line(qty=3)], points=1000, balance=1000, commission_bp=500, campaigns=[], at=NOW)
    assert (q.total_minor, q.points, q.card_minor, q.commission_minor) == (3000, 1000, 2000, 150)
    assert quote([line()], points=1000, balance=5000, commission_bp=0, campaigns=[], at=NOW).card_minor == 0
    with pytest.raises(FailedPrecondition, match="balance"):
        quote([line()], points=600, balance=500, commission_bp=0, campaigns=[], at=NOW)
    with pytest.raises(InvalidArgument, match="total"):
        quote([line()], points=1001, balance=5000, commission_bp=0, campaigns=[], at=NOW)
    with pytest.raises(InvalidArgument, match="one currency"):
        quote([line(), line("p2", currency="USD")], points=0, balance=None, commission_bp=0, campaigns=[], at=NOW)
    with pytest.raises(InvalidArgument, match="quantity"):
        quote([line(qty=0)], points=0, balance=None, commission_bp=0, campaigns=[], at=NOW)


def test_commission_rounds_down_in_the_merchants_favour() -> None:
    assert commission(1999, 500) == 99
    assert commission(0, 500) == 0


def test_campaign_bonus_applies_in_its_period_to_its_products_best_rate_wins() -> None:
    week = CampaignRule(None, 200, NOW - timedelta(days=1), NOW + timedelta(days=6))
    tea_only = CampaignRule("tea", 500, NOW - timedelta(days=1), NOW + timedelta(days=1))
    over = CampaignRule(None, 1000, NOW - timedelta(days=9), NOW - timedelta(days=2))
    lines = (line("tea", 2, 1000), line("pot", 1, 3000))
    assert campaign_bonus(lines, [week, tea_only, over], NOW) == 2000 * 5 // 100 + 3000 * 2 // 100
    assert campaign_bonus(lines, [week], NOW + timedelta(days=7)) == 0


def test_the_merchant_is_paid_the_total_less_commission_and_the_campaign_bonus_it_funds() -> None:
    tea_week = CampaignRule("tea", 500, NOW - timedelta(days=1), NOW + timedelta(days=6))
    q = quote([line("tea", 2, 2000)], points=1000, balance=1000, commission_bp=500, campaigns=[tea_week], at=NOW)
    assert (q.total_minor, q.commission_minor, q.bonus_points, q.merchant_payout_minor) == (4000, 200, 200, 3600)
    # How the member pays (points or card) does not change what the merchant is owed.
    by_card = quote([line("tea", 2, 2000)], points=0, balance=None, commission_bp=500, campaigns=[tea_week], at=NOW)
    assert by_card.merchant_payout_minor == 3600
    assert quote([line()], points=0, balance=None, commission_bp=500, campaigns=[], at=NOW).merchant_payout_minor == 950
