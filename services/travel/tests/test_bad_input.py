"""Bad input gets a clear error and changes nothing: no booking, no held night, no payment call."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from .travel_support import CATALOGUE_DAYS, TravelEnv, booking_body, days_ahead

HOTEL = "htl_kyoto_gion_machiya"


def _bad_bodies() -> list[tuple[str, dict[str, Any], int, str]]:
    ok = booking_body()
    return [
        ("check-out not after check-in", {**ok, "check_out": ok["check_in"]}, 400, "must be after check-in"),
        ("check-out before check-in", {**ok, "check_out": (days_ahead(9)).isoformat()}, 400, "must be after check-in"),
        (
            "dates in the past",
            {**ok, "check_in": days_ahead(-2).isoformat(), "check_out": days_ahead(-1).isoformat()},
            400,
            "in the past",
        ),
        (
            "stay over the maximum",
            {**ok, "check_out": (days_ahead(10) + timedelta(days=15)).isoformat()},
            400,
            "at most 14 nights",
        ),
        ("zero guests", {**ok, "guests": 0}, 400, "at least 1"),
        ("unknown hotel", {**ok, "hotel_id": "htl_nowhere"}, 404, "unknown hotel 'htl_nowhere'"),
        ("room of another hotel", {**ok, "room_type_id": "htl_naha_harbour_resort.twin"}, 404, "has no room type"),
        ("unknown rate plan", {**ok, "rate_plan_id": f"{HOTEL}.free"}, 404, "has no rate plan"),
        ("too many guests for the room", {**ok, "guests": 3}, 400, "sleeps at most 2"),
        ("more points than the total", {**ok, "points": 10_000_000}, 400, "points can be used"),
        ("negative points", {**ok, "points": -5}, 400, "cannot be negative"),
        ("no idempotency key", {**ok, "idempotency_key": ""}, 400, "idempotency_key is required"),
        ("not a date", {**ok, "check_in": "next friday"}, 400, "check_in must be a date"),
        (
            "beyond the inventory",
            {
                **ok,
                "check_in": days_ahead(CATALOGUE_DAYS + 1).isoformat(),
                "check_out": days_ahead(CATALOGUE_DAYS + 2).isoformat(),
            },
            400,
            "not on sale",
        ),
    ]


BAD = _bad_bodies()


async def _nothing_paid(travel: TravelEnv, member_id: str) -> None:
    """Points never heard of a booking: nothing reserved or spent at travel."""
    balance = await travel.balance(member_id)
    assert (balance.total, balance.pending) == (5_000, 0)
    assert await travel.travel_entries(member_id) == []


@pytest.mark.parametrize(("body", "status", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_a_bad_booking_is_refused_and_changes_nothing(
    travel: TravelEnv, body: dict[str, Any], status: int, message: str
) -> None:
    member = await travel.member(points=5_000, card=False)
    headers = member.headers
    before = await travel.sql("SELECT room_type_id, night, held, sold FROM travel_inventory ORDER BY 1, 2")

    resp = await travel.http.post("/api/bookings", json=body, headers=headers)

    assert resp.status_code == status, resp.text
    assert message in resp.json()["message"]
    assert await travel.sql("SELECT id FROM travel_booking") == []
    assert await travel.sql("SELECT room_type_id, night, held, sold FROM travel_inventory ORDER BY 1, 2") == before
    await _nothing_paid(travel, member.id)


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"city": "tokyo", "check_in": "10", "check_out": "12"}, 400, "must be after check-in"),
        ({"city": "tokyo", "check_in": "-3", "check_out": "-1"}, 400, "in the past"),
        ({"city": "tokyo", "check_in": "10", "check_out": "30"}, 400, "at most 14 nights"),
        ({"city": "tokyo", "check_in": "10", "check_out": "11", "guests": 0}, 400, "at least 1"),
        ({"city": "atlantis", "check_in": "10", "check_out": "11"}, 400, "unknown city"),
    ],
)
async def test_bad_searches_are_refused_with_a_reason(
    travel: TravelEnv, params: dict[str, Any], status: int, message: str
) -> None:
    q = dict(params)
    for k in ("check_in", "check_out"):
        q[k] = days_ahead(int(q[k])).isoformat()
    if q["check_in"] == days_ahead(10).isoformat() and q["check_out"] == days_ahead(12).isoformat():
        q["check_in"], q["check_out"] = q["check_out"], q["check_in"]
    resp = await travel.http.get("/api/search", params=q)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["message"]


async def test_an_unknown_hotel_page_is_not_found(travel: TravelEnv) -> None:
    resp = await travel.http.get("/api/hotels/htl_nowhere")
    assert resp.status_code == 404 and "unknown hotel" in resp.json()["message"]


async def test_booking_needs_a_member_token(travel: TravelEnv) -> None:
    service = travel.ecosystem.issuer.service_token("shop", "points:credit")
    anonymous = await travel.http.post("/api/bookings", json=booking_body())
    as_service = await travel.http.post(
        "/api/bookings", json=booking_body(), headers={"authorization": f"Bearer {service}"}
    )
    assert anonymous.status_code == 401 and as_service.status_code == 403
    assert await travel.sql("SELECT id FROM travel_booking") == []


@pytest.mark.parametrize("param", ["offset", "limit"])
async def test_paging_beyond_int64_is_refused_before_the_database(travel: TravelEnv, param: str) -> None:
    headers = (await travel.member(card=False)).headers
    resp = await travel.http.get("/api/bookings", params={param: 10**20}, headers=headers)
    assert resp.status_code == 422, resp.text
    assert "9223372036854775807" in resp.text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('"points": 4000000000000000000000000000', "out of range"),
        ('"points": 4e27', "out of range"),
        ('"idempotency_key": "\\udc80"', "lone surrogate"),
        ('"idempotency_key": "k\\u0000"', "NUL"),
    ],
)
async def test_a_booking_with_unstorable_values_is_refused_and_changes_nothing(
    travel: TravelEnv, raw: str, message: str
) -> None:
    member = await travel.member(points=5_000, card=False)
    headers = member.headers
    body = json.dumps(booking_body())[:-1] + ", " + raw + "}"
    resp = await travel.http.post(
        "/api/bookings", content=body, headers={**headers, "content-type": "application/json"}
    )
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["message"]
    assert await travel.sql("SELECT id FROM travel_booking") == []
    await _nothing_paid(travel, member.id)
