"""The kit's flash messages: signed, so a cookie someone else wrote shows nothing; bounded; and only
the four kinds the layout styles. (Shown once and never taken from the URL: the shop, travel and
fintech page tests check that through the running services.)"""

from __future__ import annotations

import pytest
from kizuna.kit import flash
from kizuna.kit.web import format_date, format_money, format_points
from starlette.requests import Request

SECRET = "a-service-secret"


def test_a_message_round_trips_only_under_the_services_key() -> None:
    value = flash.serializer(SECRET).dumps([["error", "Your card was declined."]])
    assert flash.decode(value, SECRET) == [flash.Flash("error", "Your card was declined.")]
    assert flash.decode(value, "another-service") == []
    forged = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    assert flash.decode(forged, SECRET) == []
    assert flash.decode("not a cookie", SECRET) == []
    assert flash.decode(value, None) == []


def test_only_known_kinds_and_a_bounded_number_are_shown() -> None:
    many = [["success", f"message {i}"] for i in range(20)]
    assert len(flash.decode(flash.serializer(SECRET).dumps(many), SECRET)) == flash.MAX_MESSAGES
    odd = flash.serializer(SECRET).dumps([["script", "x"], ["info", 3], ["info", "ok"], "junk"])
    assert flash.decode(odd, SECRET) == [flash.Flash("info", "ok")]


def test_money_points_and_dates_read_as_people_write_them() -> None:
    assert format_money(17_536) == "¥17,536" and format_money(-17_536) == "-¥17,536"
    assert format_money(1250, "USD") == "$12.50" and format_money(5, "CHF") == "0.05 CHF"
    assert format_points(1200) == "1,200 pt" and format_points(-300, signed=True) == "-300 pt"
    assert format_points(5, signed=True) == "+5 pt"
    assert format_date("2026-12-06") == "6 Dec 2026" and format_date("2026-12-06", "ja") == "2026年12月6日"


def test_a_handler_queues_messages_of_a_known_kind() -> None:
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    flash.flash(request, "success", "Saved.")
    assert flash.outgoing(request.scope) == [["success", "Saved."]]
    assert flash.flashes(request) == [flash.Flash("success", "Saved.")] and flash.consumed(request.scope)
    with pytest.raises(ValueError, match="flash kind"):
        flash.flash(request, "loud", "x")  # type: ignore[arg-type]
