"""Fraud rules for card authorizations: pure functions of the attempt and the card's recent history.

The rules follow what card issuers watch for, not a bare count of swipes:
- one amount far above what the card is used for (`max_amount_minor`);
- velocity: many purchases at outside merchants in a short window. Holds that were voided and
  purchases refunded in full are not spending, and purchases at the ecosystem's own merchants
  (shop, travel, ...: the member signed in with their Kizuna ID and authorized the payment with
  their own token) are not anonymous card-present risk, so neither counts;
- card testing: a burst of small authorizations at outside merchants, the way stolen card numbers
  are checked before being used for real. Voided ones count here: testers void what they take.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# Statuses of a hold that never became spending.
NOT_SPENT = frozenset({"voided", "declined"})


@dataclass(frozen=True)
class FraudRules:
    velocity_count: int
    velocity_window: timedelta
    max_amount_minor: int
    # Card testing: this many small authorizations (at most `small_amount_minor`) at outside
    # merchants within `testing_window`, this one included, are declined.
    small_amount_minor: int = 1_000
    testing_count: int = 4
    testing_window: timedelta = timedelta(minutes=10)
    # Client ids of the ecosystem's own services (their purchases are member-authenticated).
    ecosystem: frozenset[str] = frozenset()

    def velocity_rule(self) -> str:
        return f"velocity-{self.velocity_count}-in-{int(self.velocity_window.total_seconds() // 60)}m"

    def amount_rule(self) -> str:
        return f"amount-over-{self.max_amount_minor}"

    def testing_rule(self) -> str:
        return f"card-testing-{self.testing_count}-under-{self.small_amount_minor}"

    @property
    def history_window(self) -> timedelta:
        """How far back the rules look."""
        return max(self.velocity_window, self.testing_window)


@dataclass(frozen=True)
class Attempt:
    """An earlier authorization of the card, as the rules see it."""

    at: datetime
    amount_minor: int
    status: str  # approved | captured | voided | expired | declined
    client_id: str
    refunded_in_full: bool = False


def in_ecosystem(rules: FraudRules, client_id: str) -> bool:
    return client_id in rules.ecosystem


def matching_rule(
    rules: FraudRules, amount_minor: int, client_id: str, history: Sequence[Attempt], now: datetime
) -> str:
    """The name of the first rule this authorization breaks, or "" when none does."""
    if amount_minor > rules.max_amount_minor:
        return rules.amount_rule()
    if in_ecosystem(rules, client_id):
        return ""
    outside = [a for a in history if not in_ecosystem(rules, a.client_id)]
    velocity_start = now - rules.velocity_window
    spending = [a for a in outside if a.at > velocity_start and a.status not in NOT_SPENT and not a.refunded_in_full]
    if len(spending) >= rules.velocity_count:
        return rules.velocity_rule()
    if amount_minor <= rules.small_amount_minor:
        testing_start = now - rules.testing_window
        small = [
            a
            for a in outside
            if a.at > testing_start and a.amount_minor <= rules.small_amount_minor and a.status != "declined"
        ]
        if len(small) + 1 >= rules.testing_count:
            return rules.testing_rule()
    return ""


def ecosystem_clients(names: Iterable[str]) -> frozenset[str]:
    """The ecosystem's services by client id (each service's client id is its name)."""
    return frozenset(n for n in names if n)
