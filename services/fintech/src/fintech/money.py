"""Money as the domain sees it: integer minor units with an ISO 4217 currency. Never floats."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kizuna.kit.errors import InvalidArgument

_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class Money:
    amount_minor: int
    currency: str

    def __str__(self) -> str:
        return f"{self.amount_minor} {self.currency}"


def positive_money(amount_minor: int, currency: str, what: str = "amount", *, expected: str | None = None) -> Money:
    """Validate a request amount: > 0, a currency code, and (when given) the expected currency."""
    currency = currency or (expected or "")
    if not _CURRENCY.match(currency):
        raise InvalidArgument(f"{what}: currency must be an ISO 4217 code such as JPY, got {currency!r}")
    if not isinstance(amount_minor, int) or isinstance(amount_minor, bool):
        raise InvalidArgument(f"{what} must be an integer number of minor units")
    if amount_minor <= 0:
        raise InvalidArgument(f"{what} must be positive, got {amount_minor}")
    if expected is not None and currency != expected:
        raise InvalidArgument(f"{what}: currency {currency} does not match the account currency {expected}")
    return Money(amount_minor, currency)
