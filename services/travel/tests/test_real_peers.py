"""Travel against the REAL points and fintech services (the kit's `ecosystem` fixture: each a
`python -m <svc>` process for the module), over gRPC and NATS, with tokens from the test issuer:
the last-room race, cancellation refunds of card and points (before and after the
free-cancellation deadline), and points earned exactly once for a completed stay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import httpx
import nats
import pytest
from kizuna.kit.events import OutboxMessage
from kizuna.kit.telemetry import configure_telemetry
from kizuna.kit.testing_stack import Ecosystem
from kizuna.points.v1 import points_pb2
from sqlmodel import select
from travel.service import service as travel_service
from travel.stay import HOTEL_TZ

from .travel_support import (
    MEMBER_SCOPES,
    TRAVEL_SCOPES,
    TRAVEL_SECRET,
    Clock,
    booking_body,
    days_ahead,
    signed_in_browser,
    travel_settings,
    wait_until,
)

ROOM = "htl_kyoto_gion_machiya.standard_double"


@dataclass
class RealEnv:
    travel: Any  # Runtime
    http: httpx.AsyncClient
    ecosystem: Ecosystem
    clock: Clock

    @property
    def nats_url(self) -> str:
        return self.ecosystem.nats_url

    def headers(self, member_id: str) -> dict[str, str]:
        token = self.ecosystem.issuer.member_token(member_id, scope=f"{MEMBER_SCOPES} fintech:read")
        return {"authorization": f"Bearer {token}"}

    async def new_member(self, points: int) -> str:
        """Registered at points (as identity would announce it), with points and a card."""
        return (await self.ecosystem.member(points=points, card=True, income_minor=6_000_000)).id

    async def balance(self, member: str) -> points_pb2.GetBalanceResponse:
        return await self.ecosystem.balance(member)

    async def entries(self, member: str) -> list[points_pb2.Entry]:
        return await self.ecosystem.entries(member)

    async def spent_on_travel(self, member: str) -> int:
        """Points the member has spent at travel, net of refunds (the card's own earning aside)."""
        kinds = (points_pb2.ENTRY_KIND_SPEND, points_pb2.ENTRY_KIND_REFUND)
        return -sum(e.amount for e in await self.entries(member) if e.source_service == "travel" and e.kind in kinds)

    async def offer_total(self, body: dict[str, Any]) -> int:
        """What travel asks for the stay in `body` (its room and rate plan), as its hotel API quotes it."""
        resp = await self.http.get(
            f"/api/hotels/{body['hotel_id']}",
            params={"check_in": body["check_in"], "check_out": body["check_out"], "guests": body["guests"]},
        )
        assert resp.status_code == 200, resp.text
        return next(
            int(o["total_minor"])
            for o in resp.json()["offers"]
            if o["room_type_id"] == body["room_type_id"] and o["rate_plan_id"] == body["rate_plan_id"]
        )

    async def card_available(self, member: str) -> int:
        return int((await self.ecosystem.card(member))["available_minor"])

    async def nights(self, check_in: Any, check_out: Any) -> list[tuple[int, int, int]]:
        from sqlalchemy import text

        async with self.travel.db.sessions() as session:
            rows = await session.execute(
                text(
                    "SELECT total, held, sold FROM travel_inventory WHERE room_type_id = :r AND night >= :a AND "
                    "night < :b ORDER BY night"
                ),
                {"r": ROOM, "a": check_in, "b": check_out},
            )
            return [tuple(r) for r in rows.all()]


@pytest.fixture(scope="module")
def ecosystem_env() -> dict[str, dict[str, str]]:
    # No bonus for using several services: how much a stay earns then does not depend on whether
    # points reads fintech's or travel's stream first (services/points tests the bonus).
    return {"points": {"EARN_BONUS_BP_PER_SERVICE": "0"}}


@pytest.fixture
async def real(ecosystem: Ecosystem, database_url: str) -> AsyncIterator[RealEnv]:
    """Travel in this process on a fresh database, paying through the module's real points and fintech."""
    configure_telemetry("travel")
    ecosystem.issuer.register_client("travel", TRAVEL_SECRET, TRAVEL_SCOPES)
    settings = travel_settings(
        ecosystem.nats_url, database_url, ecosystem.issuer.issuer, ecosystem.points_addr, ecosystem.fintech_addr
    )
    clock = Clock()
    async with travel_service.running(settings) as runtime:
        runtime.clock = clock
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=30) as http:
            yield RealEnv(runtime, http, ecosystem, clock)


async def test_last_room_race_with_real_points_and_fintech(real: RealEnv) -> None:
    start = days_ahead(10)
    from sqlalchemy import text

    async with real.travel.db.transaction() as session:
        await session.execute(text("UPDATE travel_inventory SET sold = total - 1 WHERE room_type_id = :r"), {"r": ROOM})
    members = [await real.new_member(points=3_000) for _ in range(4)]
    limits = [await real.card_available(m) for m in members]

    responses = await asyncio.gather(
        *(
            real.http.post("/api/bookings", json=booking_body(points=1_000, key=f"race-{i}"), headers=real.headers(m))
            for i, m in enumerate(members)
        )
    )

    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409], [r.text for r in responses]
    assert await real.nights(start, start + timedelta(days=2)) == [(8, 0, 8)] * 2
    for m, limit, r in zip(members, limits, responses, strict=True):
        assert (await real.balance(m)).pending == 0
        if r.status_code == 201:
            assert await real.spent_on_travel(m) == 1_000
            assert await real.card_available(m) == limit - r.json()["card_amount"]["amount_minor"]
        else:
            assert await real.spent_on_travel(m) == 0
            assert (await real.balance(m)).total == 3_000 and await real.card_available(m) == limit


async def test_cancel_after_the_deadline_keeps_the_penalty_and_refunds_card_and_points(real: RealEnv) -> None:
    member = await real.new_member(points=5_000)
    limit = await real.card_available(member)
    resp = await real.http.post("/api/bookings", json=booking_body(points=4_000), headers=real.headers(member))
    assert resp.status_code == 201, resp.text
    booking = resp.json()
    total, card = booking["total"]["amount_minor"], booking["card_amount"]["amount_minor"]
    assert await real.spent_on_travel(member) == 4_000 and await real.card_available(member) == limit - card

    deadline = datetime.combine(days_ahead(10) - timedelta(days=3), time(0), HOTEL_TZ).astimezone(UTC)
    real.clock.at = deadline + timedelta(hours=1)
    cancel = await real.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=real.headers(member))

    assert cancel.status_code == 200, cancel.text
    penalty = total // 2
    body = cancel.json()
    assert body["penalty"]["amount_minor"] == penalty
    from_card = min(penalty, card)
    assert body["card_refunded"]["amount_minor"] == card - from_card
    assert body["points_refunded"] == 4_000 - (penalty - from_card)
    assert await real.card_available(member) == limit - from_card
    assert await real.spent_on_travel(member) == 4_000 - body["points_refunded"]
    assert (await real.balance(member)).pending == 0
    assert await real.nights(days_ahead(10), days_ahead(12)) == [(8, 0, 0)] * 2


async def test_cancel_before_the_deadline_refunds_card_and_points_in_full(real: RealEnv) -> None:
    member = await real.new_member(points=5_000)
    limit = await real.card_available(member)
    resp = await real.http.post("/api/bookings", json=booking_body(points=4_000), headers=real.headers(member))
    assert resp.status_code == 201, resp.text
    booking = resp.json()
    card = booking["card_amount"]["amount_minor"]
    assert card > 0 and await real.card_available(member) == limit - card
    assert await real.spent_on_travel(member) == 4_000

    # Check-in is ten days away; free cancellation ends three days before it.
    deadline = datetime.combine(days_ahead(10) - timedelta(days=3), time(0), HOTEL_TZ).astimezone(UTC)
    real.clock.at = deadline - timedelta(hours=1)
    cancel = await real.http.post(f"/api/bookings/{booking['booking_id']}/cancel", headers=real.headers(member))

    assert cancel.status_code == 200, cancel.text
    body = cancel.json()
    assert body["status"] == "cancelled" and body["penalty"]["amount_minor"] == 0
    assert body["card_refunded"]["amount_minor"] == card and body["points_refunded"] == 4_000
    assert await real.card_available(member) == limit
    assert await real.spent_on_travel(member) == 0
    assert await real.nights(days_ahead(10), days_ahead(12)) == [(8, 0, 0)] * 2

    # Points settles the rest on its own: the card purchase's earn is clawed back with its refund
    # and the stay's pending earn is cancelled, which leaves the member where they started.
    async def settled() -> points_pb2.GetBalanceResponse | None:
        clawed = any(
            e.kind == points_pb2.ENTRY_KIND_CLAWBACK and e.source_service == "fintech"
            for e in await real.entries(member)
        )
        balance = await real.balance(member)
        return balance if clawed and balance.earning == 0 else None

    balance = await wait_until(settled, timeout=30)
    assert (balance.total, balance.pending, balance.debt) == (5_000, 0, 0)


async def test_a_completed_stay_earns_points_exactly_once(real: RealEnv) -> None:
    # Paid half in points, half by card: the stay earns points' base rate (EARN_DEFAULT_BASE_BP =
    # 100 bp, 1 point per 100 yen) on the money paid only; points spent earn nothing.
    body = booking_body()
    total = await real.offer_total(body)
    used = total // 2
    member = await real.new_member(points=used)
    resp = await real.http.post("/api/bookings", json={**body, "points": used}, headers=real.headers(member))
    assert resp.status_code == 201, resp.text
    paid = resp.json()["card_amount"]["amount_minor"]
    assert paid == total - used > 0
    booking_id = resp.json()["booking_id"]
    real.clock.at = datetime.combine(days_ahead(12), time(12), HOTEL_TZ).astimezone(UTC)

    assert await real.travel.context.complete_stays() == 1
    assert await real.travel.context.complete_stays() == 0

    async def travel_credits() -> list[points_pb2.Entry]:
        return [
            e
            for e in await real.entries(member)
            if e.kind == points_pb2.ENTRY_KIND_CREDIT and e.source_service == "travel" and e.source_ref == booking_id
        ]

    [earned] = await wait_until(travel_credits, timeout=20)
    assert earned.amount == paid * 100 // 10_000
    # The relay publishes the completion (of the earning contract) again, as after a crash
    # between publish and mark-sent:
    async with real.travel.db.sessions() as session:
        row = (
            await session.exec(select(OutboxMessage).where(OutboxMessage.subject == "travel.purchase.completed"))
        ).one()
    nc = await nats.connect(real.nats_url)
    js = nc.jetstream()
    again = await js.publish(row.subject, row.payload, headers={**row.headers, "Nats-Msg-Id": f"{row.event_id}-2"})

    async def points_acknowledged_it() -> bool:
        info = await js.consumer_info("TRAVEL", "points-travel-earn")
        return info.ack_floor.stream_seq >= again.seq and info.num_pending == 0 and info.num_ack_pending == 0

    await wait_until(points_acknowledged_it, timeout=20)
    await nc.close()
    assert await travel_credits() == [earned]


async def test_the_hotel_page_promises_exactly_what_the_stay_earns(real: RealEnv) -> None:
    # The member sees "earn N pt" beside the room (points' earn preview), pays by card, stays:
    # points credits exactly N.
    body = booking_body(key="promise")
    total = await real.offer_total(body)
    member = await real.new_member(points=0)
    browser = await signed_in_browser(real.travel, real.ecosystem.issuer, str(real.http.base_url), member)
    async with browser:
        stay = {"check_in": body["check_in"], "check_out": body["check_out"], "guests": body["guests"]}
        page = await browser.get(f"/hotels/{body['hotel_id']}", params=stay)
        assert page.status_code == 200, page.text
        row = next(r for r in page.text.split("<tr>") if f"{total:,}</strong>" in r and 'data-earn="' in r)
        promised = int(row.split('data-earn="')[1].split('"')[0])
        assert promised > 0
    resp = await real.http.post("/api/bookings", json=body, headers=real.headers(member))
    assert resp.status_code == 201, resp.text
    booking_id = resp.json()["booking_id"]
    real.clock.at = datetime.combine(days_ahead(12), time(12), HOTEL_TZ).astimezone(UTC)
    assert await real.travel.context.complete_stays() == 1

    async def credited() -> list[points_pb2.Entry]:
        return [
            e
            for e in await real.entries(member)
            if e.kind == points_pb2.ENTRY_KIND_CREDIT and e.source_service == "travel" and e.source_ref == booking_id
        ]

    [earned] = await wait_until(credited, timeout=20)
    assert earned.amount == promised
