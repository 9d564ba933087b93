"""Fraud rules for card authorizations: pure functions of the attempt and the recent history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class FraudRules:
    velocity_count: int
    velocity_window: timedelta
    max_amount_minor: int

    def velocity_rule(self) -> str:
        return f"velocity-{self.velocity_count}-in-{int(self.velocity_window.total_seconds() // 60)}m"

    def amount_rule(self) -> str:
        return f"amount-over-{self.max_amount_minor}"


def matching_rule(rules: FraudRules, amount_minor: int, recent_attempts: Sequence[datetime], now: datetime) -> str:
    """The name of the first rule the attempt breaks, or "" when none does.

    `recent_attempts` are the times of the card's earlier approved authorizations.
    """
    if amount_minor > rules.max_amount_minor:
        return rules.amount_rule()
    window_start = now - rules.velocity_window
    if sum(1 for t in recent_attempts if t > window_start) >= rules.velocity_count:
        return rules.velocity_rule()
    return ""
