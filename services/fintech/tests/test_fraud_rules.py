"""Fraud rules a real card uses: a member's ordinary session inside the ecosystem is never declined,
voided holds and refunded purchases are not spending, and card testing (bursts of small
authorizations at an outside merchant) is still stopped. The rules as pure functions, then through
the real PaymentsService over gRPC."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fintech.fraud import Attempt, FraudRules, matching_rule
from kizuna.fintech.v1 import fintech_pb2

from .fintech_world import FintechClient, new_member

APPROVED = fintech_pb2.AUTHORIZATION_STATUS_APPROVED
DECLINED = fintech_pb2.AUTHORIZATION_STATUS_DECLINED
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
RULES = FraudRules(5, timedelta(minutes=10), 1_000_000, ecosystem=frozenset({"shop", "travel"}))


def _ago(minutes: float, amount: int = 5_000, status: str = "captured", client: str = "partner-cafe") -> Attempt:
    return Attempt(NOW - timedelta(minutes=minutes), amount, status, client)


def test_a_member_session_inside_the_ecosystem_never_counts() -> None:
    # Three shops and two hotels within ten minutes, then a sixth, seventh... ecosystem purchase.
    history = [_ago(9 - i, 12_000, client="shop" if i < 3 else "travel") for i in range(8)]
    assert matching_rule(RULES, 8_000, "shop", history, NOW) == ""
    # ... and they do not push an outside purchase over the velocity limit either.
    assert matching_rule(RULES, 8_000, "partner-cafe", history, NOW) == ""


def test_velocity_counts_only_spending_at_outside_merchants() -> None:
    spent = [_ago(i) for i in range(1, 6)]
    assert matching_rule(RULES, 5_000, "partner-cafe", spent, NOW) == "velocity-5-in-10m"
    # Voided holds, declined attempts and purchases refunded in full are not spending.
    undone = [
        _ago(1, status="voided"),
        _ago(2, status="declined"),
        Attempt(NOW - timedelta(minutes=3), 5_000, "captured", "partner-cafe", refunded_in_full=True),
        *[_ago(i) for i in (4, 5, 6, 7)],
    ]
    assert matching_rule(RULES, 5_000, "partner-cafe", undone, NOW) == ""
    # Outside the window nothing counts.
    assert matching_rule(RULES, 5_000, "partner-cafe", [_ago(11 + i) for i in range(9)], NOW) == ""


def test_bursts_of_small_authorizations_are_card_testing() -> None:
    # Three small holds, voided as testers do, then a fourth: declined.
    probes = [_ago(i, 100, status="voided") for i in (1, 2, 3)]
    assert matching_rule(RULES, 120, "partner-cafe", probes, NOW) == "card-testing-4-under-1000"
    # The same amounts spread beyond the window, or one real-sized purchase, are fine.
    assert matching_rule(RULES, 120, "partner-cafe", [_ago(i, 100) for i in (11, 12, 13)], NOW) == ""
    assert matching_rule(RULES, 4_800, "partner-cafe", probes, NOW) == ""
    # Small card parts of ecosystem checkouts (the rest paid with points) are not probes.
    small_shop = [_ago(i, 300, client="shop") for i in (1, 2, 3, 4)]
    assert matching_rule(RULES, 200, "shop", small_shop, NOW) == ""
    assert matching_rule(RULES, 200, "partner-cafe", small_shop, NOW) == ""


def test_one_huge_amount_is_declined_wherever_it_is_spent() -> None:
    assert matching_rule(RULES, 1_000_001, "shop", [], NOW) == "amount-over-1000000"


@pytest.fixture
def ecosystem(monkeypatch: pytest.MonkeyPatch) -> None:
    # The platform tells every service which services make up the ecosystem.
    links = {name: f"http://127.0.0.1:{8000 + i}" for i, name in enumerate(["identity", "points", "shop", "travel"])}
    monkeypatch.setenv("KIZUNA_LINKS", json.dumps(links))


async def _void(fintech: FintechClient, authorization_id: str, service: str) -> None:
    await fintech.payments.Void(
        fintech_pb2.VoidRequest(authorization_id=authorization_id, idempotency_key=uuid.uuid4().hex),
        metadata=fintech.pay_metadata(None, service),
        timeout=10,
    )


async def test_a_realistic_session_passes_and_card_testing_is_declined_through_the_api(
    ecosystem: None, fintech: FintechClient
) -> None:
    member = new_member()
    await fintech.apply_card(member, income=9_000_000)
    # Three shop orders (one cancelled: its hold voided) and two hotels in a few minutes.
    for amount in (3_900, 1_800, 19_800):
        auth = await fintech.authorize(member, amount, service="shop", merchant="shop")
        assert auth.status == APPROVED, auth
    await _void(fintech, auth.authorization_id, "shop")
    for amount in (22_950, 13_800):
        auth = await fintech.authorize(member, amount, service="travel", merchant="travel")
        assert auth.status == APPROVED, auth
    # A coffee and lunch outside the ecosystem on top of it.
    for amount in (650, 1_400):
        auth = await fintech.authorize(member, amount, service="partner-cafe", merchant="cafe")
        assert auth.status == APPROVED, auth

    # A stolen number being tested at an outside merchant: small holds, each voided.
    victim = new_member()
    await fintech.apply_card(victim)
    outcomes = []
    for cents in (101, 102, 103, 104, 105):
        auth = await fintech.authorize(victim, cents, service="partner-cafe", merchant="cafe")
        outcomes.append(auth.status)
        if auth.status == APPROVED:
            await _void(fintech, auth.authorization_id, "partner-cafe")
    assert outcomes == [APPROVED, APPROVED, APPROVED, DECLINED, DECLINED]
    assert auth.decline_reason == fintech_pb2.DECLINE_REASON_FRAUD_RULE
    assert (await fintech.card(victim))["held_minor"] == 0
