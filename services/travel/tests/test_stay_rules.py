"""The pure rules of a stay: nights, price, availability, cancellation penalty and refund split."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kizuna.kit.errors import InvalidArgument
from travel import stay as rules
from travel.catalogue import night_rate

NOW = datetime(2030, 3, 10, 3, 0, tzinfo=UTC)  # 12:00 in Japan, 2030-03-10


def test_nights_exclude_the_check_out_day() -> None:
    assert rules.nights_between(date(2030, 3, 30), date(2030, 4, 2)) == [
        date(2030, 3, 30),
        date(2030, 3, 31),
        date(2030, 4, 1),
    ]


@pytest.mark.parametrize(
    ("check_in", "check_out", "guests", "message"),
    [
        (date(2030, 3, 12), date(2030, 3, 12), 2, "must be after check-in"),
        (date(2030, 3, 12), date(2030, 3, 11), 2, "must be after check-in"),
        (date(2030, 3, 9), date(2030, 3, 11), 2, "in the past"),
        (date(2030, 3, 12), date(2030, 3, 27), 2, "at most 14 nights"),
        (date(2030, 3, 12), date(2030, 3, 13), 0, "at least 1"),
        (date(2032, 3, 12), date(2032, 3, 13), 1, "days ahead"),
    ],
)
def test_bad_stays_are_refused_with_a_reason(check_in: date, check_out: date, guests: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        rules.validate_stay(check_in, check_out, guests, now=NOW, max_nights=14)


def test_today_is_the_hotels_day_not_utcs() -> None:
    late_utc = datetime(2030, 3, 9, 16, 0, tzinfo=UTC)  # already 2030-03-10 01:00 in Japan
    assert rules.validate_stay(date(2030, 3, 10), date(2030, 3, 11), 1, now=late_utc, max_nights=14).nights == [
        date(2030, 3, 10)
    ]


def test_price_is_the_sum_of_nights_under_the_plan_rounded_down() -> None:
    assert rules.stay_price([10_000, 12_500], 10_000) == 22_500
    assert rules.stay_price([10_000, 12_500], 8_500) == 8_500 + 10_625
    assert rules.night_price(9_999, 3_333) == 3_332


def test_rates_follow_the_calendar() -> None:
    weekday, saturday = date(2030, 3, 13), date(2030, 3, 16)
    assert night_rate(20_000, weekday) == 20_000
    assert night_rate(20_000, saturday) == 25_000
    assert night_rate(20_000, date(2030, 5, 1)) == 28_000  # Golden Week (a Wednesday)
    assert night_rate(20_000, date(2030, 12, 31)) == 30_000


def test_rooms_free_is_the_tightest_night() -> None:
    stay = rules.StayRequest(date(2030, 3, 12), date(2030, 3, 15), 2)
    inv = [
        rules.NightInventory(date(2030, 3, 12), 5, 1, 1, 100),
        rules.NightInventory(date(2030, 3, 13), 5, 0, 4, 100),
        rules.NightInventory(date(2030, 3, 14), 5, 0, 0, 100),
    ]
    assert rules.rooms_free(stay, inv) == 1
    assert rules.rooms_free(stay, inv[:2]) == 0  # a night with no inventory is not for sale


FLEX = rules.CancellationPolicy(refundable=True, free_days=3, penalty_bp=5_000)
SAVER = rules.CancellationPolicy(refundable=False, free_days=0, penalty_bp=10_000)


def test_refundable_plan_is_free_until_the_deadline_then_costs_the_penalty() -> None:
    check_in = date(2030, 3, 20)
    deadline = FLEX.deadline(check_in)
    assert deadline == datetime(2030, 3, 16, 15, 0, tzinfo=UTC)  # 2030-03-17 00:00 JST
    assert rules.cancellation_penalty(FLEX, check_in, 30_001, now=deadline - timedelta(seconds=1)) == 0
    assert rules.cancellation_penalty(FLEX, check_in, 30_001, now=deadline) == 15_000
    assert rules.cancellation_penalty(SAVER, check_in, 30_001, now=NOW) == 30_001


def test_a_stay_that_has_begun_cannot_be_cancelled() -> None:
    with pytest.raises(InvalidArgument, match="has begun"):
        rules.check_cancellable(date(2030, 3, 10), now=NOW)
    rules.check_cancellable(date(2030, 3, 11), now=NOW)


def test_penalty_comes_from_card_first_then_points() -> None:
    assert rules.split_refund(card_paid_minor=20_000, points_used=10_000, penalty_minor=15_000) == rules.Refund(
        15_000, 5_000, 10_000
    )
    assert rules.split_refund(card_paid_minor=5_000, points_used=10_000, penalty_minor=8_000) == rules.Refund(
        8_000, 0, 7_000
    )
    assert rules.split_refund(card_paid_minor=0, points_used=10_000, penalty_minor=0) == rules.Refund(0, 0, 10_000)


@given(card=st.integers(0, 10**7), points=st.integers(0, 10**7), penalty=st.integers(0, 3 * 10**7))
def test_refund_split_loses_nothing(card: int, points: int, penalty: int) -> None:
    r = rules.split_refund(card_paid_minor=card, points_used=points, penalty_minor=penalty)
    assert r.penalty_minor + r.card_refund_minor + r.points_refund == card + points
    assert 0 <= r.card_refund_minor <= card and 0 <= r.points_refund <= points


def test_payment_split_refuses_more_points_than_the_total() -> None:
    assert rules.split_payment(10_000, 2_500) == (2_500, 7_500)
    with pytest.raises(InvalidArgument, match="at most 10000 points"):
        rules.split_payment(10_000, 10_001)
    with pytest.raises(InvalidArgument, match="negative"):
        rules.split_payment(10_000, -1)


def test_a_stay_ends_at_check_out_time_in_japan() -> None:
    out = date(2030, 3, 12)
    assert not rules.stay_ended(out, now=datetime(2030, 3, 12, 1, 59, tzinfo=UTC))
    assert rules.stay_ended(out, now=datetime(2030, 3, 12, 2, 0, tzinfo=UTC))  # 11:00 JST
