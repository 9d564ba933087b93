"""The ledger's rules, pure: no database, no network, the clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kizuna.kit.errors import FailedPrecondition
from points.ledger import (
    LIMITED_TIME,
    REGULAR,
    Campaign,
    EarnRules,
    HoldState,
    LotState,
    add_months,
    allocate,
    money_paid_minor,
    plan_clawback,
    plan_credit,
    plan_refund,
    proportion,
    quote_earn,
    refund_take_back,
    repay_debt_first,
    split_capture,
)

NOW = datetime(2025, 3, 10, 12, tzinfo=UTC)
DAY = timedelta(days=1)


def test_limited_time_first_then_soonest_expiring() -> None:
    lots = [
        LotState(1, REGULAR, 50, NOW + 300 * DAY),
        LotState(2, LIMITED_TIME, 10, NOW + 20 * DAY),
        LotState(3, REGULAR, 50, NOW + 100 * DAY),
        LotState(4, LIMITED_TIME, 10, NOW + 5 * DAY),
    ]
    assert allocate(lots, 75, NOW) == [(4, 10), (2, 10), (3, 50), (1, 5)]


def test_expired_and_empty_lots_are_not_spent_and_shortfall_is_refused() -> None:
    lots = [
        LotState(1, LIMITED_TIME, 10, NOW - DAY),
        LotState(2, REGULAR, 0, NOW + DAY),
        LotState(3, REGULAR, 5, NOW + DAY),
    ]
    assert allocate(lots, 5, NOW) == [(3, 5)]
    with pytest.raises(FailedPrecondition):
        allocate(lots, 6, NOW)


def test_partial_capture_spends_in_hold_order_and_returns_the_rest() -> None:
    holds = [HoldState(4, 10), HoldState(2, 10), HoldState(3, 50)]
    assert split_capture(holds, 25) == [(4, 10, 0), (2, 10, 0), (3, 5, 45)]


def test_refund_returns_to_live_lots_and_loses_expired_ones() -> None:
    holds = [HoldState(1, 10, 10, 0, NOW - DAY), HoldState(2, 30, 30, 5, NOW + DAY)]
    assert plan_refund(holds, 20, NOW) == [(1, 0, 10), (2, 10, 0)]


def test_clawback_takes_from_its_lot_then_others_then_debt() -> None:
    own = LotState(1, REGULAR, 3, NOW + DAY)
    others = [own, LotState(2, LIMITED_TIME, 4, NOW + DAY), LotState(3, REGULAR, 0, NOW + DAY)]
    plan = plan_clawback(own, others, 10, NOW)
    assert plan.takes == [(1, 3), (2, 4)] and plan.debt == 3


def test_credit_repays_debt_first() -> None:
    assert plan_credit(10, 3) == (3, 7)
    assert plan_credit(2, 3) == (2, 0)


def test_base_rate_rounds_down() -> None:
    quote = quote_earn(EarnRules(), "shop", 1999, [], 0, NOW)
    assert (quote.regular, quote.bonus, quote.explanation) == (19, 0, "1% base")


def test_multiplier_grows_with_other_services_used_this_month() -> None:
    rules = EarnRules(labels={"fintech": "card"})
    quote = quote_earn(rules, "shop", 10_000, ["shop", "travel", "fintech"], 0, NOW)
    assert quote.regular == 300
    assert quote.explanation == "1% base + 2% for using card and travel this month"


def test_campaign_pays_limited_time_bonus_inside_its_window_only() -> None:
    campaign = Campaign("Spring x2", "travel", NOW - DAY, NOW + DAY, NOW + 30 * DAY, extra_rate_bp=100, fixed_bonus=5)
    rules = EarnRules(campaigns=(campaign,))
    quote = quote_earn(rules, "travel", 10_000, [], 0, NOW)
    assert (quote.regular, quote.bonus, quote.bonus_expires_at) == (100, 105, NOW + 30 * DAY)
    assert "105 limited-time points from Spring x2" in quote.explanation
    assert quote_earn(rules, "shop", 10_000, [], 0, NOW).bonus == 0
    assert quote_earn(rules, "travel", 10_000, [], 0, NOW + 2 * DAY).bonus == 0


def test_caps_per_transaction_and_per_month() -> None:
    rules = EarnRules(cap_per_transaction=50, cap_per_month=120)
    assert quote_earn(rules, "shop", 100_000, [], 0, NOW).total == 50
    last = quote_earn(rules, "shop", 100_000, [], 100, NOW)
    assert last.total == 20 and "capped at 20 points per month" in last.explanation
    assert quote_earn(rules, "shop", 100_000, [], 120, NOW).total == 0


def test_month_arithmetic_clamps_days() -> None:
    assert add_months(datetime(2025, 1, 31, tzinfo=UTC), 1) == datetime(2025, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2024, 3, 1, tzinfo=UTC), 12) == datetime(2025, 3, 1, tzinfo=UTC)


def test_proportion_never_exceeds_the_points() -> None:
    assert proportion(100, 500, 1000) == 50
    assert proportion(100, 2000, 1000) == 100


def test_refunds_take_back_their_cumulative_share_so_the_whole_purchase_takes_back_everything() -> None:
    taken = 0
    shares = []
    for refunded in (3_333, 6_666, 10_000):  # money refunded so far
        share = refund_take_back(100, taken, refunded, 10_000)
        shares.append(share)
        taken += share
    assert shares == [33, 33, 34]
    assert refund_take_back(300, 0, 10_000, 20_000) + refund_take_back(300, 150, 20_000, 20_000) == 300


def test_points_coming_back_repay_debt_first_but_not_from_expired_lots() -> None:
    returns = [(1, 30, NOW - DAY), (2, 50, NOW + DAY), (3, 20, NOW + DAY)]
    assert repay_debt_first(returns, 60, NOW) == ([(1, 30), (2, 0), (3, 10)], 60)
    assert repay_debt_first(returns, 0, NOW) == ([(1, 30), (2, 50), (3, 20)], 0)


@given(
    earned=st.integers(0, 10_000),
    purchase=st.integers(1, 1_000_000),
    cuts=st.lists(st.integers(0, 1_000_000), max_size=6),
)
def test_refunds_of_the_whole_purchase_take_back_exactly_what_it_earned(
    earned: int, purchase: int, cuts: list[int]
) -> None:
    # Any split of the purchase into refunds: each takes back its due, never more than earned in all.
    refunded_so_far = sorted({min(c, purchase) for c in cuts} | {purchase})
    taken = 0
    refunded_before = 0
    for refunded in refunded_so_far:
        share = refund_take_back(earned, taken, refunded, purchase)
        assert share >= 0
        assert share <= proportion(earned, refunded - refunded_before, purchase) + 1  # at most rounding
        taken += share
        refunded_before = refunded
    assert taken == earned


def test_points_used_are_not_money_paid() -> None:
    assert money_paid_minor(30_000, 10_000) == 20_000
    assert money_paid_minor(1_000, 2_000) == 0
