"""Helpers for travel's tests: the in-process environment, clocks, request bodies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import nats
from kizuna.kit.clock import Clock as KitClock
from kizuna.kit.service import Runtime
from kizuna.kit.testing import reset_streams, wait_until  # noqa: F401 (re-exported)
from sqlalchemy import text
from travel.booking import Bookings
from travel.settings import Settings
from travel.stay import hotel_today

from .travel_peers import CardPeer, PointsPeer

TRAVEL_SECRET = "travel-test-secret"
TRAVEL_SCOPES = "points:spend points:credit points:read fintech:pay"
CATALOGUE_DAYS = 20
# What a member grants travel's pages: spending their points and paying with their card.
MEMBER_SCOPES = "points:read points:spend fintech:pay travel:read travel:book"


class Clock(KitClock):
    """A settable clock for the booking rules (deadlines, check-out, 'today'): the real time until `at` is set."""

    def __init__(self) -> None:
        self.at: datetime | None = None

    def now(self) -> datetime:
        return self.at or datetime.now(UTC)


def travel_settings(
    nats_url: str, database_url: str, issuer: str, points_addr: str, fintech_addr: str, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "kizuna_issuer": issuer,
        "kizuna_client_secret": TRAVEL_SECRET,
        "database_url": database_url,
        "points_addr": points_addr,
        "fintech_addr": fintech_addr,
        "http_port": 0,
        "grpc_port": 0,
        "seed_catalogue": True,
        "catalogue_days": CATALOGUE_DAYS,
        "outbox_poll_seconds": 0.2,
        "jobs_interval_seconds": 3600,
        "log_format": "text",
        "peer_timeout_seconds": 3,
        **overrides,
    }
    return Settings(**values)


@dataclass
class TravelEnv:
    runtime: Runtime[Settings]
    http: httpx.AsyncClient
    issuer: Any
    points: PointsPeer
    cards: CardPeer
    clock: Clock

    @property
    def bookings(self) -> Bookings:
        return self.runtime.context_as(Bookings)

    def member(self, member_id: str, *, points: int = 0, credit: int | None = 1_000_000) -> dict[str, str]:
        """A member with points and (unless credit is None) a card; returns their auth header."""
        self.points.balances[member_id] = points
        if credit is not None:
            self.cards.available[member_id] = credit
        token = self.issuer.member_token(member_id, scope=MEMBER_SCOPES)
        return {"authorization": f"Bearer {token}"}

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.runtime.db.transaction() as session:
            result = await session.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []

    async def nights(self, room_type_id: str, check_in: date, check_out: date) -> list[tuple[int, int, int]]:
        """(total, held, sold) of each night of a stay."""
        rows = await self.sql(
            "SELECT total, held, sold FROM travel_inventory WHERE room_type_id = :r AND night >= :a AND night < :b "
            "ORDER BY night",
            r=room_type_id,
            a=check_in,
            b=check_out,
        )
        return [tuple(r) for r in rows]

    async def leave_rooms(self, room_type_id: str, check_in: date, check_out: date, free: int) -> None:
        """Sell the room type down (as earlier bookings would) until `free` rooms are left each night."""
        await self.sql(
            "UPDATE travel_inventory SET sold = total - :free WHERE room_type_id = :r AND night >= :a AND night < :b",
            free=free,
            r=room_type_id,
            a=check_in,
            b=check_out,
        )


def days_ahead(n: int) -> date:
    return hotel_today(datetime.now(UTC)) + timedelta(days=n)


def booking_body(
    hotel: str = "htl_kyoto_gion_machiya",
    room: str = "standard_double",
    plan: str = "flex",
    *,
    check_in: date | None = None,
    nights: int = 2,
    guests: int = 2,
    points: int = 0,
    key: str = "k1",
) -> dict[str, Any]:
    check_in = check_in or days_ahead(10)
    return {
        "hotel_id": hotel,
        "room_type_id": f"{hotel}.{room}",
        "rate_plan_id": f"{hotel}.{plan}",
        "check_in": check_in.isoformat(),
        "check_out": (check_in + timedelta(days=nights)).isoformat(),
        "guests": guests,
        "points": points,
        "idempotency_key": key,
    }


async def stream_events(nats_url: str, subject: str) -> list[Any]:
    """Every message on `subject` in the TRAVEL stream (an ephemeral consumer from the start)."""
    from nats.js.api import ConsumerConfig

    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(subject, config=ConsumerConfig(inactive_threshold=5))
        try:
            return list(await sub.fetch(100, timeout=0.5))
        except (nats.errors.TimeoutError, TimeoutError):  # nothing there (nats-py raises either)
            return []
    finally:
        await nc.close()


async def signed_in_browser(runtime: Runtime[Any], issuer: Any, base_url: str, member_id: str) -> httpx.AsyncClient:
    """A browser holding a kit web session for the member, as `/auth/callback` leaves it after
    sign-in at identity (the sign-in itself is the kit's and identity's to test); its access token
    is a real one from the test issuer, which travel's peers trust."""
    import uuid
    from datetime import timedelta

    from kizuna.kit.db import utcnow
    from kizuna.kit.oidc_client import WebSession

    rp = runtime.state["web_sign_in"]
    now = utcnow()
    sid = uuid.uuid4().hex
    async with runtime.db.transaction() as session:
        session.add(
            WebSession(
                id=sid,
                member_id=member_id,
                display_name="Hana",
                id_token="unused",
                access_token=issuer.member_token(member_id, scope=f"openid {MEMBER_SCOPES}"),
                access_expires_at=now + timedelta(minutes=5),
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
    browser = httpx.AsyncClient(base_url=base_url, timeout=30)
    browser.cookies.set(rp.session_cookie, rp._session_signer.dumps(sid))
    return browser


def form_fields(html: str, action: str) -> dict[str, str]:
    """The hidden fields (CSRF token, idempotency key, ...) of the page's form posting to `action`."""
    import re

    match = re.search(rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>', html, re.S)
    assert match, f"no form for {action}"
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', match.group(1)))
