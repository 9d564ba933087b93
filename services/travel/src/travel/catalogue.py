"""The seeded catalogue: hotels in six Japanese cities, their room types, rate plans, and nightly
inventory with rates that follow the calendar (weekends, cherry blossom, Golden Week, Obon, New Year).

`seed()` is idempotent and quick: it adds the hotels once, then tops inventory up to the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from kizuna.kit.db import Database
from sqlalchemy import func, insert
from sqlmodel import col, select

from travel.models import Hotel, NightInventory, RatePlan, RoomType


@dataclass(frozen=True)
class _Room:
    key: str
    name: str
    max_guests: int
    rooms: int
    rate_factor_pct: int  # of the hotel's base rate
    description: str


@dataclass(frozen=True)
class _Hotel:
    key: str
    name: str
    city: str
    area: str
    address: str
    stars: int
    base_rate: int
    description: str


CITIES = {
    "tokyo": "Tokyo",
    "kyoto": "Kyoto",
    "osaka": "Osaka",
    "sapporo": "Sapporo",
    "fukuoka": "Fukuoka",
    "naha": "Naha",
}

HOTELS = [
    _Hotel(
        "tokyo_shinjuku_skyline",
        "Shinjuku Skyline Hotel",
        "tokyo",
        "Shinjuku",
        "2-7-2 Nishi-Shinjuku, Shinjuku-ku, Tokyo",
        4,
        21000,
        "High-floor rooms above Shinjuku's west exit, five minutes from the station.",
    ),
    _Hotel(
        "tokyo_asakusa_ryokan",
        "Asakusa Sumida Ryokan",
        "tokyo",
        "Asakusa",
        "1-30-4 Asakusa, Taito-ku, Tokyo",
        3,
        16000,
        "A family-run inn with tatami rooms and a rooftop view of Senso-ji and the Skytree.",
    ),
    _Hotel(
        "tokyo_ginza_grand",
        "Ginza Grand Marunouchi",
        "tokyo",
        "Ginza",
        "4-1-1 Ginza, Chuo-ku, Tokyo",
        5,
        48000,
        "Quiet luxury between Ginza and Tokyo Station, with a spa and a sushi counter.",
    ),
    _Hotel(
        "kyoto_gion_machiya",
        "Gion Machiya Stay",
        "kyoto",
        "Gion",
        "570-120 Gionmachi Minamigawa, Higashiyama-ku, Kyoto",
        4,
        32000,
        "Restored wooden townhouses on a lantern-lit lane in Gion, each with a small garden.",
    ),
    _Hotel(
        "kyoto_station_central",
        "Kyoto Station Central Hotel",
        "kyoto",
        "Kyoto Station",
        "Higashi-Shiokoji-cho 901, Shimogyo-ku, Kyoto",
        3,
        13500,
        "Practical rooms two minutes from the Shinkansen gates; Fushimi Inari is one stop away.",
    ),
    _Hotel(
        "kyoto_arashiyama_onsen",
        "Arashiyama Riverside Onsen",
        "kyoto",
        "Arashiyama",
        "Sagatenryuji Susukinobaba-cho 3, Ukyo-ku, Kyoto",
        5,
        54000,
        "A hot-spring ryokan on the Katsura river with kaiseki dinners and the bamboo grove nearby.",
    ),
    _Hotel(
        "osaka_namba_lights",
        "Namba Lights Hotel",
        "osaka",
        "Namba",
        "3-4-8 Nanba, Chuo-ku, Osaka",
        3,
        12000,
        "Steps from Dotonbori's food stalls and neon, with late check-in.",
    ),
    _Hotel(
        "osaka_umeda_sky",
        "Umeda Sky Tower Hotel",
        "osaka",
        "Umeda",
        "1-1-88 Oyodonaka, Kita-ku, Osaka",
        4,
        24000,
        "Modern rooms next to Osaka Station with views across the Yodo river.",
    ),
    _Hotel(
        "osaka_bay_resort",
        "Osaka Bay Resort",
        "osaka",
        "Bay Area",
        "6-2-45 Shimaya, Konohana-ku, Osaka",
        4,
        27000,
        "Family rooms by the bay, a short walk from the theme park gates.",
    ),
    _Hotel(
        "sapporo_odori_park",
        "Odori Park Hotel Sapporo",
        "sapporo",
        "Odori",
        "Kita 1-jo Nishi 4-chome, Chuo-ku, Sapporo",
        4,
        17000,
        "Facing Odori Park, the heart of the Snow Festival, with a rooftop bath.",
    ),
    _Hotel(
        "sapporo_susukino_inn",
        "Susukino Ramen Alley Inn",
        "sapporo",
        "Susukino",
        "Minami 5-jo Nishi 3-chome, Chuo-ku, Sapporo",
        2,
        8500,
        "Compact rooms above the ramen alley; the subway is at the door.",
    ),
    _Hotel(
        "sapporo_jozankei_onsen",
        "Jozankei Valley Onsen",
        "sapporo",
        "Jozankei",
        "3-chome Jozankei Onsen Higashi, Minami-ku, Sapporo",
        4,
        29000,
        "A mountain hot-spring resort an hour from the city, glowing with autumn leaves.",
    ),
    _Hotel(
        "fukuoka_hakata_gate",
        "Hakata Gate Hotel",
        "fukuoka",
        "Hakata",
        "2-1-1 Hakataekichuogai, Hakata-ku, Fukuoka",
        3,
        11000,
        "Above Hakata Station, near the yatai food stalls along the river.",
    ),
    _Hotel(
        "fukuoka_tenjin_terrace",
        "Tenjin Terrace Hotel",
        "fukuoka",
        "Tenjin",
        "2-5-55 Tenjin, Chuo-ku, Fukuoka",
        4,
        19000,
        "A design hotel in Tenjin's shopping streets with a terrace bar.",
    ),
    _Hotel(
        "fukuoka_momochi_seaside",
        "Momochi Seaside Hotel",
        "fukuoka",
        "Momochi",
        "2-3-26 Jigyohama, Chuo-ku, Fukuoka",
        4,
        23000,
        "Sea-view rooms by Momochi beach and Fukuoka Tower.",
    ),
    _Hotel(
        "naha_kokusai_street",
        "Kokusai Street Hotel Naha",
        "naha",
        "Kokusai-dori",
        "3-2-10 Makishi, Naha, Okinawa",
        3,
        12500,
        "In the middle of Kokusai-dori, near the Makishi public market.",
    ),
    _Hotel(
        "naha_harbour_resort",
        "Naha Harbour Resort",
        "naha",
        "Wakasa",
        "3-2-1 Wakasa, Naha, Okinawa",
        4,
        26000,
        "Ocean-view rooms by Naminoue beach with an infinity pool.",
    ),
    _Hotel(
        "naha_shuri_guesthouse",
        "Shuri Castle Guesthouse",
        "naha",
        "Shuri",
        "1-2 Shurikinjocho, Naha, Okinawa",
        2,
        7500,
        "A quiet guesthouse on the stone-paved slope below Shuri Castle.",
    ),
]

ROOMS = [
    _Room("standard_double", "Standard Double", 2, 8, 100, "A double bed, shower, 18 m²."),
    _Room("twin", "Superior Twin", 2, 6, 125, "Two single beds and a bath, 24 m²."),
    _Room("family", "Family Room", 4, 3, 190, "A double and two singles, 35 m²."),
]


@dataclass(frozen=True)
class _Plan:
    key: str
    name: str
    price_bp: int
    refundable: bool
    free_cancel_days: int
    penalty_bp: int
    breakfast: bool


PLANS = [
    _Plan("flex", "Flexible", 10_000, True, 3, 5_000, False),
    _Plan("breakfast", "Flexible with breakfast", 11_200, True, 1, 3_000, True),
    _Plan("saver", "Advance saver (non-refundable)", 8_500, False, 0, 10_000, False),
]

# (first day, last day, percent of the rate) for busy seasons; years repeat.
SEASONS = [
    ((12, 28), (12, 31), 150),
    ((1, 1), (1, 3), 150),
    ((2, 4), (2, 11), 140),  # Sapporo Snow Festival week (every city gets busier)
    ((3, 25), (4, 7), 130),  # cherry blossom
    ((4, 29), (5, 5), 140),  # Golden Week
    ((8, 10), (8, 16), 130),  # Obon
    ((11, 15), (11, 30), 115),  # autumn leaves
]


def night_rate(base_rate: int, night: date) -> int:
    """The rate for one night: weekends (Friday, Saturday) +25%, busy seasons more; rounded to ¥100."""
    pct = 100
    for (m1, d1), (m2, d2), season_pct in SEASONS:
        if (m1, d1) <= (night.month, night.day) <= (m2, d2):
            pct = season_pct
    if night.weekday() in (4, 5):
        pct = pct * 125 // 100
    return (base_rate * pct // 100 + 50) // 100 * 100


def hotel_id(key: str) -> str:
    return f"htl_{key}"


@dataclass
class Seeded:
    """How many rows of each kind a seeding added."""

    hotels: int = 0
    room_types: int = 0
    rate_plans: int = 0
    nights: int = 0


async def seed(db: Database, *, start: date, days: int) -> Seeded:
    """Add the catalogue if it is missing and inventory for every night from `start` for `days`
    nights that has none yet. Returns how many rows of each kind were added."""
    added = Seeded()
    async with db.transaction() as session:
        existing = set((await session.exec(select(Hotel.id))).all())
        for h in HOTELS:
            hid = hotel_id(h.key)
            if hid in existing:
                continue
            session.add(
                Hotel(
                    id=hid,
                    name=h.name,
                    city=h.city,
                    city_name=CITIES[h.city],
                    area=h.area,
                    address=h.address,
                    stars=h.stars,
                    description=h.description,
                )
            )
            added.hotels += 1
            for r in ROOMS:
                session.add(
                    RoomType(
                        id=f"{hid}.{r.key}",
                        hotel_id=hid,
                        name=r.name,
                        max_guests=r.max_guests,
                        rooms=r.rooms,
                        base_rate_minor=h.base_rate * r.rate_factor_pct // 100,
                        description=r.description,
                    )
                )
                added.room_types += 1
            for p in PLANS:
                session.add(
                    RatePlan(
                        id=f"{hid}.{p.key}",
                        hotel_id=hid,
                        name=p.name,
                        price_bp=p.price_bp,
                        refundable=p.refundable,
                        free_cancel_days=p.free_cancel_days,
                        penalty_bp=p.penalty_bp,
                        breakfast=p.breakfast,
                    )
                )
                added.rate_plans += 1
        await session.flush()
        rooms = (await session.exec(select(RoomType))).all()
        last = dict(
            (
                await session.exec(
                    select(NightInventory.room_type_id, func.max(NightInventory.night)).group_by(
                        col(NightInventory.room_type_id)
                    )
                )
            ).all()
        )
        end = start + timedelta(days=days)
        rows = []
        for room in rooms:
            first = max(start, last[room.id] + timedelta(days=1)) if room.id in last else start
            night = first
            while night < end:
                rows.append(
                    {
                        "room_type_id": room.id,
                        "night": night,
                        "total": room.rooms,
                        "held": 0,
                        "sold": 0,
                        "rate_minor": night_rate(room.base_rate_minor, night),
                    }
                )
                night += timedelta(days=1)
        if rows:
            await session.exec(insert(NightInventory), params=rows)
        added.nights = len(rows)
    return added
