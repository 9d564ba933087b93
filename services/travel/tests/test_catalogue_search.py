"""The seeded catalogue, search with availability for every night and total price, and hotel pages."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

from travel.catalogue import CITIES, HOTELS, Seeded, night_rate, seed

from .travel_support import CATALOGUE_DAYS, TravelEnv, days_ahead


async def test_the_catalogue_covers_six_cities_and_seeding_again_adds_nothing(travel: TravelEnv) -> None:
    counts = await travel.sql("SELECT city, COUNT(*) FROM travel_hotel GROUP BY city ORDER BY city")
    assert dict(counts) == {c: 3 for c in CITIES}
    nights = await travel.sql("SELECT COUNT(*) FROM travel_inventory")
    assert nights == [(len(HOTELS) * 3 * CATALOGUE_DAYS,)]

    again = await seed(travel.runtime.db, start=days_ahead(0), days=CATALOGUE_DAYS + 2)

    assert again == Seeded(hotels=0, room_types=0, rate_plans=0, nights=len(HOTELS) * 3 * 2)


async def test_search_shows_every_hotel_of_the_city_with_availability_and_total(travel: TravelEnv) -> None:
    check_in, check_out = days_ahead(5), days_ahead(8)
    sold_out = "htl_tokyo_ginza_grand.standard_double"
    await travel.leave_rooms(sold_out, check_in + timedelta(days=1), check_in + timedelta(days=2), free=0)

    resp = await travel.http.get(
        "/api/search",
        params={"city": "tokyo", "check_in": check_in.isoformat(), "check_out": check_out.isoformat(), "guests": 2},
    )

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["nights"] == 3
    assert {h["hotel_id"] for h in body["hotels"]} == {
        "htl_tokyo_shinjuku_skyline",
        "htl_tokyo_asakusa_ryokan",
        "htl_tokyo_ginza_grand",
    }
    assert [h["from_minor"] for h in body["hotels"]] == sorted(h["from_minor"] for h in body["hotels"])
    ginza = next(h for h in body["hotels"] if h["hotel_id"] == "htl_tokyo_ginza_grand")
    flex = next(o for o in ginza["offers"] if o["room_type_id"] == sold_out and o["rate_plan_id"].endswith(".flex"))
    assert flex["rooms_free"] == 0 and flex["available"] is False  # one night full -> not bookable
    twin = next(
        o for o in ginza["offers"] if o["room_type_id"].endswith(".twin") and o["rate_plan_id"].endswith("saver")
    )
    base = 48_000 * 125 // 100
    expected = [night_rate(base, check_in + timedelta(days=i)) * 8_500 // 10_000 for i in range(3)]
    assert twin["night_prices"] == expected and twin["total_minor"] == sum(expected)
    assert twin["rooms_free"] == 6 and twin["refundable"] is False


async def test_search_for_four_guests_offers_only_family_rooms(travel: TravelEnv) -> None:
    resp = await travel.http.get(
        "/api/search",
        params={
            "city": "naha",
            "check_in": days_ahead(3).isoformat(),
            "check_out": days_ahead(4).isoformat(),
            "guests": 4,
        },
    )
    offers = [o for h in resp.json()["hotels"] for o in h["offers"]]
    assert offers and all(o["room_type_id"].endswith(".family") for o in offers)


async def test_the_hotel_page_lists_rooms_plans_and_cancellation_terms(travel: TravelEnv) -> None:
    resp = await travel.http.get("/api/hotels/htl_sapporo_odori_park")
    body = resp.json()
    assert body["name"] == "Odori Park Hotel Sapporo" and body["city_name"] == "Sapporo"
    assert [r["name"] for r in body["rooms"]] == ["Standard Double", "Superior Twin", "Family Room"]
    terms = {p["name"]: p["cancellation"] for p in body["rate_plans"]}
    assert terms["Flexible"] == "Free cancellation until 3 days before check-in; after that 50% of the total."
    assert terms["Advance saver (non-refundable)"].startswith("Non-refundable")
    assert body["offers"] == []


def test_the_seed_command_migrates_and_seeds(tmp_path: object, database_url: str) -> None:
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": "nats://127.0.0.1:1",
        "KIZUNA_ISSUER": "http://127.0.0.1:1",
        "CATALOGUE_DAYS": "3",
        "LOG_FORMAT": "text",
    }
    import os

    out = subprocess.run(
        [sys.executable, "-m", "travel", "seed"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "'hotels': 18" in out and f"'nights': {len(HOTELS) * 3 * 3}" in out
    again = subprocess.run(
        [sys.executable, "-m", "travel", "seed"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "'hotels': 0" in again
