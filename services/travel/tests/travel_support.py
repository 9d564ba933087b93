"""Travel's tests: travel in this process on a fresh database, paying through the REAL points and
fintech services (the kit's `ecosystem`: `python -m points` / `python -m fintech` processes, tokens
from the test issuer, events over the test session's NATS). Points and fintech are reached through
a `Relay` each that the test can stall or cut, to play a network failure or a crash in the middle
of a saga."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import nats
from kizuna.kit.clock import Clock as KitClock
from kizuna.kit.db import utcnow
from kizuna.kit.oidc_client import WebSession, WebSignIn
from kizuna.kit.service import Runtime
from kizuna.kit.testing import wait_until
from kizuna.kit.testing_stack import Ecosystem
from kizuna.points.v1 import points_pb2
from nats.js.api import ConsumerConfig
from sqlalchemy import text
from travel.booking import Bookings
from travel.settings import Settings
from travel.stay import HOTEL_TZ, hotel_today

__all__ = ["wait_until"]

TRAVEL_SECRET = "travel-test-secret"
TRAVEL_SCOPES = "points:spend points:credit points:read fintech:pay"
CATALOGUE_DAYS = 20
# What a member grants travel's pages: spending their points and paying with their card.
MEMBER_SCOPES = "points:read points:spend fintech:pay travel:read travel:book"
HOTEL = "htl_kyoto_gion_machiya"
ROOM = f"{HOTEL}.standard_double"


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
        # Pages wait for earn previews as long as a loaded test machine may need: the tests look at
        # which badges show, not at how fast points answers (the stall test sets its own budget).
        "earn_preview_budget_seconds": 30,
        **overrides,
    }
    return Settings(**values)


class Relay:
    """A TCP relay in front of a real service: `pass` forwards, `stall` swallows every byte (calls
    wait until their deadline or until cancelled), `hold` keeps every byte and delivers it when the
    relay passes again, `cut` drops every connection and refuses new ones."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.mode = "pass"
        self.stalled_bytes = 0
        self.held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def set(self, mode: str) -> None:
        """Switch mode; leaving `stall` or entering `cut` drops the open connections (the client reconnects)."""
        if (mode != self.mode and self.mode == "stall") or mode == "cut":
            for writer in list(self._writers):
                writer.close()
        if self.mode == "hold" and mode != "hold":
            for writer, data in self.held:
                writer.write(data)
            self.held.clear()
        self.mode = mode

    @contextlib.contextmanager
    def away(self, mode: str) -> Iterator[None]:
        """In `mode` for the block, and passing again after it whatever happens: a failed test does
        not leave points away for the tests after it."""
        self.set(mode)
        try:
            yield
        finally:
            self.set("pass")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.close()
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.mode == "stall":
                    self.stalled_bytes += len(data)
                    continue
                if self.mode == "hold":
                    self.held.append((dst, data))
                    continue
                if self.mode == "cut":
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()
            self._writers.discard(dst)

    async def stop(self) -> None:
        self.set("cut")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(frozen=True)
class Member:
    id: str
    headers: dict[str, str]
    token: str


@dataclass
class TravelEnv:
    runtime: Runtime[Settings]
    http: httpx.AsyncClient
    ecosystem: Ecosystem
    clock: Clock
    fintech: Relay
    points: Relay
    members: list[Member] = field(default_factory=list)

    @property
    def bookings(self) -> Bookings:
        return self.runtime.context_as(Bookings)

    @property
    def nats_url(self) -> str:
        return self.ecosystem.nats_url

    async def member(self, *, points: int = 0, card: bool = True, income_minor: int = 6_000_000) -> Member:
        """A member registered at points (as identity announces them) with `points`, and a card."""
        registered = await self.ecosystem.member(points=points, card=card, income_minor=income_minor)
        token = self.ecosystem.issuer.member_token(registered.id, scope=f"{MEMBER_SCOPES} fintech:read")
        member = Member(registered.id, {"authorization": f"Bearer {token}"}, token)
        self.members.append(member)
        return member

    # ---- what points and fintech hold --------------------------------------------------------
    async def balance(self, member_id: str) -> points_pb2.GetBalanceResponse:
        return await self.ecosystem.balance(member_id)

    async def entries(self, member_id: str) -> list[points_pb2.Entry]:
        return await self.ecosystem.entries(member_id)

    async def spent_on_travel(self, member_id: str) -> int:
        """Points the member has spent at travel, net of refunds."""
        kinds = (points_pb2.ENTRY_KIND_SPEND, points_pb2.ENTRY_KIND_REFUND)
        return -sum(e.amount for e in await self.entries(member_id) if e.source_service == "travel" and e.kind in kinds)

    async def travel_entries(self, member_id: str) -> list[points_pb2.Entry]:
        return [e for e in await self.entries(member_id) if e.source_service == "travel"]

    async def card_available(self, member_id: str) -> int:
        return int((await self.ecosystem.card(member_id))["available_minor"])

    # ---- travel's own books ------------------------------------------------------------------
    async def sql(self, statement: str, **params: Any) -> list[Any]:
        """Rows of a SELECT, or [] after any other statement."""
        async with self.runtime.db.transaction() as session:
            result = await session.exec(text(statement), params=params)  # type: ignore[call-overload]  # Raw SQL.
            return list(result.all()) if statement.lstrip().upper().startswith("SELECT") else []

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

    async def book(self, member: Member, **body: Any) -> dict[str, Any]:
        resp = await self.http.post("/api/bookings", json=booking_body(**body), headers=member.headers)
        assert resp.status_code == 201, resp.text
        booking: dict[str, Any] = resp.json()
        return booking

    async def signed_in_browser(self, member: Member) -> httpx.AsyncClient:
        """A browser holding a web session for the member, as `/auth/callback` leaves it after
        sign-in at identity (the sign-in itself is the kit's and identity's to test)."""
        return await signed_in_browser(self.runtime, self.ecosystem.issuer, str(self.http.base_url), member.id)


def days_ahead(n: int) -> date:
    return hotel_today(datetime.now(UTC)) + timedelta(days=n)


def jst(d: date, hour: int) -> datetime:
    return datetime.combine(d, datetime.min.time().replace(hour=hour), HOTEL_TZ).astimezone(UTC)


def booking_body(
    hotel: str = HOTEL,
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


async def stream_events(nats_url: str, subject: str, member_id: str | None = None, *, at_least: int = 0) -> list[Any]:
    """Every message on `subject` in the TRAVEL stream (an ephemeral consumer from the start), only
    the member's when `member_id` is given (the stream holds the module's other tests' events too).
    With `at_least`, read again until that many are there (up to 20 s): the outbox relay publishes
    what a transaction staged after its commit, on its own, so an event may reach the stream a
    moment after the call that made it returned (later on a loaded machine)."""

    async def found() -> list[Any] | None:
        messages = await _stream_events(nats_url, subject, member_id)
        return messages if len(messages) >= at_least else None

    if at_least <= 0:
        return await _stream_events(nats_url, subject, member_id)
    messages: list[Any] = await wait_until(found, timeout=20, interval=0.2)
    return messages


async def _stream_events(nats_url: str, subject: str, member_id: str | None) -> list[Any]:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(subject, config=ConsumerConfig(inactive_threshold=5))
        try:
            messages = list(await sub.fetch(1000, timeout=0.5))
        except (nats.errors.TimeoutError, TimeoutError):  # nothing there (nats-py raises either)
            return []
    finally:
        await nc.close()
    if member_id is None:
        return messages
    return [m for m in messages if (m.headers or {}).get("ce-subject") == member_id]


async def signed_in_browser(runtime: Runtime[Any], issuer: Any, base_url: str, member_id: str) -> httpx.AsyncClient:
    """A browser holding a kit web session for the member; its access token is a real one from the
    test issuer, which points and fintech trust. The cookie is signed as travel's relying party
    (its client ID and secret) signs it."""
    relying_party = WebSignIn(
        issuer=issuer.issuer,
        client_id=runtime.name,
        client_secret=TRAVEL_SECRET,
        base_url=base_url,
        db=runtime.db,
    )
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
    browser.cookies.set(relying_party.session_cookie, relying_party.session_cookie_value(sid))
    await relying_party.aclose()
    return browser
