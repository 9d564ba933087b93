"""Pytest fixtures for a service's tests against the REAL ecosystem: points and fintech run as
`python -m points` / `python -m fintech` processes on fresh databases, tokens come from the
kit's test issuer (discovery, JWKS, client credentials, signed member tokens), events go
through the test session's NATS.

    async def test_a_purchase_earns(ecosystem: Ecosystem) -> None:
        member = await ecosystem.member(points=500, card=True)   # registered, credited, with a card
        secret = ecosystem.register_client("bookstore", "points:read points:spend fintech:pay")
        env = ecosystem.env_for("bookstore", secret)              # NATS_URL, KIZUNA_ISSUER, *_ADDR, ...
        ...                                                       # start the service, buy with member.token
        assert (await ecosystem.balance(member.id)).total == 500 - spent + earned

`ecosystem` runs once per test process for each distinct `ecosystem_env` and is shared by the
modules that ask for it (starting the two services costs seconds; every test makes its own
members, so they share nothing). It has a nats-server and a token issuer of its own, which no
other fixture resets or re-registers. Points and fintech are registered at the issuer with their
declared scopes, and points earns for every declared earner, as `make up` runs them. PostgreSQL
backs them when `KIZUNA_TEST_POSTGRES_URL` is set, SQLite files otherwise. Override
`ecosystem_env` in a test module to pass settings to points or fintech (e.g.
`{"points": {"EARN_DEFAULT_BASE_BP": "100"}}`); modules with the same settings share one.

A pytest plugin of the kit (entry point `kizuna-ecosystem`), loaded beside `kizuna.kit.testing`.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2 as identity_events
from kizuna.kit.auth import ServiceTokenClient, call_metadata
from kizuna.kit.declaration import Declaration, discover, earners
from kizuna.kit.testing import NatsServer, ServiceProcess, TestIssuer, wait_until
from kizuna.points.v1 import points_pb2, points_pb2_grpc

# What a member's token allows by default: see and spend their points, see and use their card.
MEMBER_SCOPE = "openid profile points:read points:spend fintech:read fintech:pay"
# The client the fixtures credit welcome points and read the ledger as.
TEST_CLIENT = "ecosystem-test"


@dataclass(frozen=True)
class TestMember:
    """A registered member: their ID and an access token with `MEMBER_SCOPE`."""

    __test__ = False

    id: str
    token: str
    issuer: TestIssuer

    def token_for(self, scope: str) -> str:
        """Another token of this member's, with exactly `scope`."""
        return self.issuer.member_token(self.id, scope=scope)

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@dataclass
class Ecosystem:
    """The real points and fintech services, the issuer every service trusts, and the NATS they share."""

    issuer: TestIssuer
    nats: NatsServer
    points: ServiceProcess
    fintech: ServiceProcess
    clients: dict[str, str] = field(default_factory=dict)

    @property
    def nats_url(self) -> str:
        """The test harness's NATS URL (never a service's: see `env_for`)."""
        return self.nats.url

    @property
    def points_addr(self) -> str:
        return self.points.grpc_address

    @property
    def fintech_addr(self) -> str:
        return self.fintech.grpc_address

    # ---- a service under test -------------------------------------------------------------------
    def register_client(self, client_id: str, scopes: str) -> str:
        """Register `client_id` at the issuer for client credentials with `scopes`; returns its secret."""
        secret = self.clients.get(client_id) or secrets.token_urlsafe(24)
        self.clients[client_id] = secret
        self.issuer.register_client(client_id, secret, scopes)
        return secret

    def service_tokens(self, client_id: str, scopes: str) -> ServiceTokenClient:
        """A kit token client for `client_id` (registered with `scopes`); close it with `aclose()`."""
        return ServiceTokenClient(self.issuer.issuer, client_id, self.register_client(client_id, scopes))

    def env_for(self, name: str, client_secret: str = "") -> dict[str, str]:
        """The environment a service needs to run against this ecosystem (as `make up` gives it)."""
        env = {
            "NATS_URL": self.nats_url,
            **_nats_user(self.nats, name),
            "KIZUNA_ISSUER": self.issuer.issuer,
            "POINTS_ADDR": self.points_addr,
            "FINTECH_ADDR": self.fintech_addr,
            "OUTBOX_POLL_SECONDS": "0.2",
        }
        if client_secret:
            env["KIZUNA_CLIENT_ID"] = name
            env["KIZUNA_CLIENT_SECRET"] = client_secret
        return env

    def service_metadata(self, scope: str, client_id: str = TEST_CLIENT, member_token: str | None = None) -> Any:
        """gRPC metadata for a call as the service `client_id` with `scope` (and the member's consent)."""
        return call_metadata(self.issuer.service_token(client_id, scope), member_token)

    # ---- members --------------------------------------------------------------------------------
    async def member(self, *, points: int = 0, card: bool = True, income_minor: int = 3_000_000) -> TestMember:
        """A new member as identity would announce them; `points` credited (regular points) and, with
        `card`, a credit card (its limit is a tenth of `income_minor`, at least 100,000 JPY)."""
        member_id = f"mbr_{uuid.uuid4().hex[:16]}"
        member = TestMember(member_id, self.issuer.member_token(member_id, scope=MEMBER_SCOPE), self.issuer)
        await self.announce(member.id)
        if points:
            await self.credit(member.id, points)
        if card:
            async with httpx.AsyncClient(base_url=self.fintech.url, timeout=15) as http:
                response = await http.post(
                    "/api/card/apply",
                    json={"annual_income_minor": income_minor, "idempotency_key": uuid.uuid4().hex},
                    headers=member.headers,
                )
            if response.status_code != 201:
                raise AssertionError(f"fintech refused the card: {response.status_code} {response.text}")
        return member

    async def announce(self, member_id: str) -> None:
        """Publish `identity.member.registered`, as identity does at sign-up (points opens a wallet)."""
        import nats

        stamp = Timestamp()
        stamp.FromDatetime(datetime.now(UTC))
        event = identity_events.MemberRegistered(member_id=member_id, display_name=member_id, registered_at=stamp)
        event_id = f"evt_{uuid.uuid4().hex}"
        nc = await nats.connect(self.nats_url)
        try:
            await nc.jetstream().publish(
                "identity.member.registered",
                event.SerializeToString(),
                headers={
                    "Nats-Msg-Id": event_id,
                    "ce-id": event_id,
                    "ce-type": "kizuna.identity.v1.MemberRegistered",
                    "ce-subject": member_id,
                    "ce-source": "kizuna/identity",
                },
            )
        finally:
            await nc.close()

    async def credit(self, member_id: str, amount: int, *, reason: str = "welcome") -> None:
        """Credit regular points, once points has opened the member's wallet."""
        attempt = 0

        async def credited() -> bool:
            # Points remembers a refused key, so each attempt while the registration is on its way
            # has a key of its own; only one can succeed.
            nonlocal attempt
            attempt += 1
            request = points_pb2.CreditRequest(
                member_id=member_id,
                amount=amount,
                kind=points_pb2.CREDIT_KIND_REGULAR,
                reason=reason,
                source_service=TEST_CLIENT,
                source_ref=reason,
                idempotency_key=f"{reason}-{member_id}-{attempt}",
            )
            try:
                await self._points_call("Credit", request, "points:credit")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            return True

        await wait_until(credited, timeout=30)

    # ---- what a test checks -----------------------------------------------------------------------
    async def balance(self, member_id: str) -> points_pb2.GetBalanceResponse:
        """The member's points at points: `total` spendable, `pending` reserved, `earning` on its way."""
        reply: points_pb2.GetBalanceResponse = await self._points_call(
            "GetBalance", points_pb2.GetBalanceRequest(member_id=member_id)
        )
        return reply

    async def entries(self, member_id: str) -> list[points_pb2.Entry]:
        """The member's ledger entries at points, newest first."""
        reply = await self._points_call("ListEntries", points_pb2.ListEntriesRequest(member_id=member_id))
        return list(reply.entries)

    async def card(self, member_id: str) -> dict[str, Any]:
        """The member's card as fintech shows it to them (available_minor, held_minor, owed_minor, ...)."""
        token = self.issuer.member_token(member_id, scope=MEMBER_SCOPE)
        async with httpx.AsyncClient(base_url=self.fintech.url, timeout=15) as http:
            response = await http.get("/api/card", headers={"authorization": f"Bearer {token}"})
        if response.status_code != 200:
            raise AssertionError(f"fintech did not show the card: {response.status_code} {response.text}")
        card: dict[str, Any] = response.json()
        return card

    async def _points_call(self, method: str, request: Any, scope: str = "points:read") -> Any:
        # A channel per call: the fixture outlives each test's event loop.
        async with grpc.aio.insecure_channel(self.points_addr) as channel:
            stub = points_pb2_grpc.PointsServiceStub(channel)
            return await getattr(stub, method)(request, metadata=self.service_metadata(scope), timeout=10)


@pytest.fixture(scope="module")
def ecosystem_env() -> dict[str, dict[str, str]]:
    """Extra settings per service for `ecosystem` (override in a test module)."""
    return {}


class _Ecosystems:
    """The ecosystems this test process runs, one per distinct `ecosystem_env`, each started the
    first time a module asks for it and kept until the session ends: every test makes its own
    members, so modules share them as the tests of one module always have.

    Each has its own nats-server and token issuer: other tests of the session reset the session
    server's streams and register clients (`points`, `fintech`) at the session issuer with secrets
    of their own, which must not reach processes that outlive their module."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.request = request
        self.tmp_path_factory = tmp_path_factory
        self.running: dict[str, Ecosystem] = {}
        self._stops: dict[str, list[Any]] = {}  # per ecosystem, in start order

    def get(self, settings: dict[str, dict[str, str]]) -> Ecosystem:
        key = json.dumps(settings, sort_keys=True)
        if key not in self.running:
            self.running[key] = self._start(key, settings)
        return self.running[key]

    def _start(self, key: str, settings: dict[str, dict[str, str]]) -> Ecosystem:
        declarations = {d.name: d for d in _declarations()}
        work = self.tmp_path_factory.mktemp("ecosystem")
        nats_server = NatsServer(0, work / "nats", auth=True, declarations=list(declarations.values()))
        stops: list[Any] = []
        self._stops[key] = stops
        stops.append(nats_server.stop)
        nats_server.start()
        issuer = TestIssuer().start()
        stops.append(issuer.stop)

        def start(name: str, env: dict[str, str]) -> ServiceProcess:
            (work / name).mkdir()
            secret = secrets.token_urlsafe(24)
            # Registered as identity registers it: the scopes its declaration needs and signs in with.
            issuer.register_client(name, secret, " ".join(declarations[name].client_scopes))
            base = {
                "NATS_URL": nats_server.url,
                **_nats_user(nats_server, name),
                "KIZUNA_ISSUER": issuer.issuer,
                "KIZUNA_DATA_DIR": str(work / name),
                "KIZUNA_CLIENT_SECRET": secret,
                "LOG_FORMAT": "json",
                "OUTBOX_POLL_SECONDS": "0.2",
                **_database(self.request, name),
            }
            # Ports 0: each service binds ports of its own choosing and reports them (no port is
            # checked free and bound later, which another process could take in between).
            proc = ServiceProcess(name, {**base, **env, **settings.get(name, {})}, log_path=work / f"{name}.log")
            stops.append(proc.stop)
            return proc.start(wait=False)

        points = start("points", {"KIZUNA_EARNERS": json.dumps(earners(list(declarations.values())))})
        points.wait_ready()
        fintech = start("fintech", {"POINTS_ADDR": points.grpc_address, "STATEMENT_INTERVAL_SECONDS": "3600"})
        fintech.wait_ready()
        return Ecosystem(issuer, nats_server, points, fintech)

    def discard(self, settings: dict[str, dict[str, str]]) -> None:
        """Stop the ecosystem of these settings now (a module whose settings point at something of
        its own, which ends with it)."""
        key = json.dumps(settings, sort_keys=True)
        self.running.pop(key, None)
        _stop_in_reverse(self._stops.pop(key, []))

    def stop(self) -> None:
        # The ecosystems side by side (each drains its services for a moment), each in reverse order.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, len(self._stops)), thread_name_prefix="kizuna-ecosystem-stop") as pool:
            for done in [pool.submit(_stop_in_reverse, stops) for stops in self._stops.values()]:
                done.result()
        self._stops.clear()
        self.running.clear()


def _stop_in_reverse(stops: list[Any]) -> None:
    for stop in reversed(stops):
        stop()


@pytest.fixture(scope="session")
def _ecosystems(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Ecosystems]:
    if os.environ.get("KIZUNA_TEST_POSTGRES_URL"):
        # Set up first so that it is torn down last: its databases are dropped (with FORCE) once
        # the services using them have stopped, not under their final outbox flush.
        request.getfixturevalue("postgres_server")
    pool = _Ecosystems(request, tmp_path_factory)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def ecosystem(
    request: pytest.FixtureRequest, _ecosystems: _Ecosystems, ecosystem_env: dict[str, dict[str, str]]
) -> Iterator[Ecosystem]:
    """Real points and fintech processes on fresh databases, with their own nats-server and token
    issuer, shared by every module of this test process that asks for the same `ecosystem_env`.
    A module marked `own_ecosystem` (its settings name something that ends with the module, such
    as its own telemetry collector) has its ecosystem stopped when it ends."""
    yield _ecosystems.get(ecosystem_env)
    if request.node.get_closest_marker("own_ecosystem") is not None:
        _ecosystems.discard(ecosystem_env)


def _declarations() -> list[Declaration]:
    """The workspace's declared services (found from the working directory, else from this file)."""
    try:
        return discover()
    except FileNotFoundError:
        return discover(Path(__file__))


def _nats_user(nats_server: NatsServer, name: str) -> dict[str, str]:
    """A declared service's own NATS credentials when the server enforces per-service permissions."""
    service_env = getattr(nats_server, "service_env", None)
    return dict(service_env(name)) if service_env is not None else {}


def _database(request: pytest.FixtureRequest, name: str) -> dict[str, str]:
    """A fresh PostgreSQL database when the suite has a server at hand, else the data dir's SQLite."""
    if not os.environ.get("KIZUNA_TEST_POSTGRES_URL"):
        return {}
    server = request.getfixturevalue("postgres_server")
    return {"DATABASE_URL": server.new_database(f"kizuna_{name}").replace("postgresql://", "postgresql+asyncpg://", 1)}
