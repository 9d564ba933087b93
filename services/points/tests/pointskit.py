"""Helpers: points running in this process on a fresh database (SQLite and PostgreSQL), reached over real
gRPC with real signed tokens; the clock is the service's own, moved by the tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.kit.auth import call_metadata
from kizuna.kit.service import Runtime
from kizuna.kit.testing import TestIssuer, wait_until
from kizuna.kit.testing import reset_streams as reset_streams
from kizuna.points.v1 import points_pb2 as pb
from kizuna.points.v1 import points_pb2_grpc
from points import audit, wallets
from points.ledger import Clock
from points.settings import Settings

SERVICE_SCOPES = "points:credit points:spend points:read"


async def waiting_on_a_lock(raw: asyncpg.Connection, statement: str = "") -> bool:
    """Whether a statement of this database (containing `statement`) waits on a lock, seen from
    the test's own connection `raw`."""
    await raw.execute("SELECT pg_stat_clear_snapshot()")  # in a transaction, the view is read once
    rows = await raw.fetch(
        "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return any(statement in row["query"] for row in rows)


async def outcome(call: Awaitable[Any]) -> Any:
    """The response, or the status code of the refusal."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def in_one_group(
    raw: asyncpg.Connection,
    groups: Any,
    wallet: str,
    first: Callable[[], Awaitable[Any]],
    calls: Callable[[], dict[str, Awaitable[Any]]],
) -> tuple[Any, dict[str, Any]]:
    """`first` runs while the test holds `wallet`'s lock, so its group waits; the calls started
    meanwhile queue behind it and, once the lock is let go, commit together in the next group.
    Returns first's outcome and each call's by name (calls start when made: `calls` makes them
    once the first group waits)."""
    lock = raw.transaction()
    await lock.start()
    try:
        await raw.execute("SELECT 1 FROM points_wallet WHERE member_id = $1 FOR UPDATE", wallet)
        started = asyncio.ensure_future(outcome(first()))
        await wait_until(lambda: waiting_on_a_lock(raw, "points_wallet"))
        made = calls()
        tasks = {name: asyncio.ensure_future(outcome(call)) for name, call in made.items()}
        await wait_until(lambda: groups.queued == len(made))
    finally:
        await lock.rollback()
    return await started, {name: await task for name, task in tasks.items()}


def stamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def key() -> str:
    return uuid.uuid4().hex


@dataclass
class Points:
    runtime: Runtime[Settings]
    stub: points_pb2_grpc.PointsServiceStub
    issuer: TestIssuer

    @property
    def clock(self) -> Clock:
        clock: Clock = self.runtime.state["clock"]
        return clock

    def auth(
        self,
        service: str = "shop",
        scope: str = SERVICE_SCOPES,
        member: str | None = None,
        member_scope: str = "points:read points:spend",
    ) -> Any:
        member_token = self.issuer.member_token(member, scope=member_scope) if member else None
        return call_metadata(self.issuer.service_token(service, scope), member_token)

    async def register(self, *members: str) -> None:
        async with self.runtime.db.transaction() as session:
            for member in members:
                await wallets.register_member(session, member, self.clock.now())

    async def credit(
        self,
        member: str,
        amount: int,
        *,
        idem: str | None = None,
        service: str = "shop",
        kind: pb.CreditKind.ValueType = pb.CREDIT_KIND_REGULAR,
        expires_at: datetime | None = None,
        ref: str = "",
        reason: str = "test credit",
    ) -> pb.CreditResponse:
        request = pb.CreditRequest(
            member_id=member, amount=amount, kind=kind, reason=reason, source_ref=ref, idempotency_key=idem or key()
        )
        if expires_at:
            request.expires_at.CopyFrom(stamp(expires_at))
        response: pb.CreditResponse = await self.stub.Credit(request, metadata=self.auth(service), timeout=30)
        return response

    async def reserve(
        self, member: str, amount: int, *, idem: str | None = None, service: str = "shop", ttl: int = 0
    ) -> pb.ReserveResponse:
        response: pb.ReserveResponse = await self.stub.Reserve(
            pb.ReserveRequest(
                member_id=member, amount=amount, ttl_seconds=ttl, reason="checkout", idempotency_key=idem or key()
            ),
            metadata=self.auth(service, member=member),
            timeout=30,
        )
        return response

    async def capture(
        self, reservation_id: str, amount: int = 0, *, idem: str | None = None, service: str = "shop"
    ) -> pb.CaptureResponse:
        response: pb.CaptureResponse = await self.stub.Capture(
            pb.CaptureRequest(reservation_id=reservation_id, amount=amount, idempotency_key=idem or key()),
            metadata=self.auth(service),
            timeout=30,
        )
        return response

    async def spend(self, member: str, amount: int) -> pb.CaptureResponse:
        return await self.capture((await self.reserve(member, amount)).reservation_id)

    async def balance(self, member: str) -> pb.GetBalanceResponse:
        response: pb.GetBalanceResponse = await self.stub.GetBalance(
            pb.GetBalanceRequest(member_id=member), metadata=self.auth(), timeout=30
        )
        return response

    async def entries(self, member: str, page_size: int = 0, token: str = "") -> pb.ListEntriesResponse:
        from kizuna.common.v1 import common_pb2

        response: pb.ListEntriesResponse = await self.stub.ListEntries(
            pb.ListEntriesRequest(member_id=member, page=common_pb2.PageRequest(page_size=page_size, page_token=token)),
            metadata=self.auth(),
            timeout=30,
        )
        return response

    async def audit(self) -> audit.AuditReport:
        async with self.runtime.db.sessions() as session:
            return await audit.audit(session)


def points_settings(nats_url: str, database_url: str, issuer: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "kizuna_issuer": issuer,
        "database_url": database_url,
        "http_port": 0,
        "grpc_port": 0,
        "outbox_poll_seconds": 0.2,
        "consumer_max_deliver": 3,
        "log_format": "text",
        "log_level": "WARNING",
        "expiry_interval_seconds": 3600,
        "kizuna_client_secret": "points-web-test-secret",
        **overrides,
    }
    return Settings(**values)


def now() -> datetime:
    return datetime.now(UTC)
