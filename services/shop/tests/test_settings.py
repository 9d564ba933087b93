"""The shop's settings refuse a ship-by deadline the points hold would not last until."""

from __future__ import annotations

from typing import TypedDict

import pytest
from pydantic import ValidationError
from shop.settings import Settings


class Required(TypedDict):
    kizuna_issuer: str
    nats_url: str


REQUIRED: Required = {"kizuna_issuer": "http://127.0.0.1:1", "nats_url": "nats://127.0.0.1:1"}


def test_ship_by_defaults_to_five_days_inside_the_seven_day_holds() -> None:
    settings = Settings(**REQUIRED)
    assert settings.ship_by_days == 5.0
    assert settings.ship_by_days * 86_400 < settings.points_hold_seconds


@pytest.mark.parametrize("ship_by_days", [7.0, 10.0, 0.0])
def test_a_ship_by_deadline_outside_the_points_hold_is_refused_at_start(ship_by_days: float) -> None:
    with pytest.raises(ValidationError, match="SHIP_BY_DAYS"):
        Settings(**REQUIRED, ship_by_days=ship_by_days)
