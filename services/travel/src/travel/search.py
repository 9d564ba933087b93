"""Searching the catalogue: hotels in a city with what is free for every night of a stay, and its price."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from kizuna.kit.errors import InvalidArgument, NotFound
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from travel import stay as rules
from travel.catalogue import CITIES
from travel.models import Hotel, NightInventory, RatePlan, RoomType


@dataclass(frozen=True)
class Offer:
    """One room type under one rate plan for the asked stay."""

    room_type_id: str
    room_name: str
    max_guests: int
    rate_plan_id: str
    plan_name: str
    breakfast: bool
    refundable: bool
    policy: rules.CancellationPolicy
    rooms_free: int
    night_prices: list[int]
    total_minor: int
    currency: str = rules.CURRENCY


@dataclass
class HotelResult:
    hotel: Hotel
    offers: list[Offer] = field(default_factory=list)

    @property
    def from_minor(self) -> int | None:
        """The cheapest bookable total, or None when nothing is free."""
        prices = [o.total_minor for o in self.offers if o.rooms_free > 0]
        return min(prices) if prices else None


def policy_of(plan: RatePlan) -> rules.CancellationPolicy:
    return rules.CancellationPolicy(plan.refundable, plan.free_cancel_days, plan.penalty_bp)


async def _inventory(
    session: AsyncSession, room_ids: list[str], stay: rules.StayRequest
) -> dict[str, list[rules.NightInventory]]:
    rows = (
        await session.exec(
            select(NightInventory).where(
                col(NightInventory.room_type_id).in_(room_ids),
                col(NightInventory.night) >= stay.check_in,
                col(NightInventory.night) < stay.check_out,
            )
        )
    ).all()
    by_room: dict[str, list[rules.NightInventory]] = defaultdict(list)
    for r in rows:
        by_room[r.room_type_id].append(rules.NightInventory(r.night, r.total, r.held, r.sold, r.rate_minor))
    return by_room


def _offers(
    rooms: list[RoomType],
    plans: list[RatePlan],
    inventory: dict[str, list[rules.NightInventory]],
    stay: rules.StayRequest,
) -> list[Offer]:
    offers: list[Offer] = []
    for room in rooms:
        if room.max_guests < stay.guests:
            continue
        nights = sorted(inventory.get(room.id, []), key=lambda n: n.night)
        free = rules.rooms_free(stay, nights)
        if len(nights) != len(stay.nights):
            continue  # beyond the inventory horizon: not for sale
        for plan in plans:
            prices = [rules.night_price(n.rate_minor, plan.price_bp) for n in nights]
            offers.append(
                Offer(
                    room.id,
                    room.name,
                    room.max_guests,
                    plan.id,
                    plan.name,
                    plan.breakfast,
                    plan.refundable,
                    policy_of(plan),
                    free,
                    prices,
                    sum(prices),
                )
            )
    return offers


async def search_hotels(session: AsyncSession, city: str, stay: rules.StayRequest) -> list[HotelResult]:
    """Every hotel of the city with its offers for the stay; hotels with something free come first."""
    if city not in CITIES:
        raise InvalidArgument(f"unknown city {city!r}; one of {', '.join(CITIES)}")
    hotels = list((await session.exec(select(Hotel).where(Hotel.city == city).order_by(col(Hotel.name)))).all())
    ids = [h.id for h in hotels]
    rooms = list((await session.exec(select(RoomType).where(col(RoomType.hotel_id).in_(ids)))).all())
    plans = list((await session.exec(select(RatePlan).where(col(RatePlan.hotel_id).in_(ids)))).all())
    inventory = await _inventory(session, [r.id for r in rooms], stay)
    results = []
    for hotel in hotels:
        hotel_rooms = sorted((r for r in rooms if r.hotel_id == hotel.id), key=lambda r: r.base_rate_minor)
        hotel_plans = sorted((p for p in plans if p.hotel_id == hotel.id), key=lambda p: p.price_bp)
        results.append(HotelResult(hotel, _offers(hotel_rooms, hotel_plans, inventory, stay)))
    results.sort(key=lambda r: (r.from_minor is None, r.from_minor or 0))
    return results


@dataclass
class HotelPage:
    hotel: Hotel
    rooms: list[RoomType]
    plans: list[RatePlan]
    offers: list[Offer]


async def hotel_page(session: AsyncSession, hotel_id: str, stay: rules.StayRequest | None) -> HotelPage:
    hotel = await session.get(Hotel, hotel_id)
    if hotel is None:
        raise NotFound(f"unknown hotel {hotel_id!r}")
    rooms = list(
        (
            await session.exec(
                select(RoomType).where(RoomType.hotel_id == hotel_id).order_by(col(RoomType.base_rate_minor))
            )
        ).all()
    )
    plans = list(
        (
            await session.exec(select(RatePlan).where(RatePlan.hotel_id == hotel_id).order_by(col(RatePlan.price_bp)))
        ).all()
    )
    offers = _offers(rooms, plans, await _inventory(session, [r.id for r in rooms], stay), stay) if stay else []
    return HotelPage(hotel, rooms, plans, offers)
