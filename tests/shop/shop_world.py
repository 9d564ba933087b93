"""Members, points and cards on the REAL points and fintech services, for the shop's journeys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import nats
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.kit.auth import call_metadata
from kizuna.kit.testing import ServiceProcess, TestIssuer, wait_until
from kizuna.points.v1 import points_pb2 as ppb
from kizuna.points.v1 import points_pb2_grpc
from shop_support import MEMBER_SCOPE, ShopApi


@dataclass
class RealPeers:
    points: ServiceProcess
    fintech: ServiceProcess
    issuer: TestIssuer
    nats_url: str

    @asynccontextmanager
    async def clients(self) -> AsyncIterator[PeerClients]:
        channel = grpc.aio.insecure_channel(self.points.grpc_address)
        async with httpx.AsyncClient(base_url=self.fintech.url, timeout=15) as fintech_http:
            try:
                yield PeerClients(self, points_pb2_grpc.PointsServiceStub(channel), fintech_http)
            finally:
                await channel.close()


@dataclass
class PeerClients:
    peers: RealPeers
    points: points_pb2_grpc.PointsServiceStub
    fintech: httpx.AsyncClient


@dataclass
class ShopWorld:
    """The shop's API plus what a test needs to see on the real peers: balances, card holds."""

    api: ShopApi
    peers: PeerClients

    @property
    def issuer(self) -> TestIssuer:
        return self.peers.peers.issuer

    def _md(self, scope: str) -> Any:
        return call_metadata(self.issuer.service_token("shop", scope))

    async def member(self, *, points: int = 1000, income: int | None = 3_000_000) -> str:
        """A new member, registered at points (with `points` credited) and holding a card unless income is None.
        A card's limit is a tenth of the income (at least 100,000 JPY)."""
        member = f"mbr_{uuid.uuid4().hex[:16]}"
        await _register(self.peers.peers.nats_url, member)
        if points:
            await self._credit(member, points)
        if income is not None:
            resp = await self.peers.fintech.post(
                "/api/card/apply",
                json={"annual_income_minor": income, "idempotency_key": uuid.uuid4().hex},
                headers=self._member_headers(member),
            )
            assert resp.status_code == 201, resp.text
        return member

    def _member_headers(self, member: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.issuer.member_token(member, scope=MEMBER_SCOPE)}"}

    async def _credit(self, member: str, amount: int) -> None:
        # Until points has processed the registration event the credit is refused, and points
        # remembers a refused idempotency key; so each attempt gets its own key (only one succeeds).
        attempt = 0

        async def done() -> bool:
            nonlocal attempt
            attempt += 1
            request = ppb.CreditRequest(
                member_id=member,
                amount=amount,
                kind=ppb.CREDIT_KIND_REGULAR,
                reason="welcome",
                source_service="shop",
                source_ref="welcome",
                idempotency_key=f"welcome-{member}-{attempt}",
            )
            try:
                await self.peers.points.Credit(request, metadata=self._md("points:credit"), timeout=5)
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False  # the member's registration event is still on its way
                raise

        await wait_until(done, timeout=20)

    async def balance(self, member: str) -> ppb.GetBalanceResponse:
        return await self.peers.points.GetBalance(
            ppb.GetBalanceRequest(member_id=member), metadata=self._md("points:read"), timeout=5
        )

    async def shop_net(self, member: str) -> int:
        """What the shop's orders changed in the member's points (spends, refunds, earnings, clawbacks).
        The card's own earnings (fintech's purchases) are fintech's, so they are left out."""
        response = await self.peers.points.ListEntries(
            ppb.ListEntriesRequest(member_id=member), metadata=self._md("points:read"), timeout=5
        )
        return sum(e.amount for e in response.entries if e.source_service == "shop" and e.source_ref != "welcome")

    async def card(self, member: str) -> dict[str, Any]:
        """The member's card as fintech shows it to them: held_minor (open authorizations), owed_minor."""
        resp = await self.peers.fintech.get("/api/card", headers=self._member_headers(member))
        assert resp.status_code == 200, resp.text
        card: dict[str, Any] = resp.json()
        return card

    async def acknowledged_by_points(
        self, republished: list[tuple[str, int]], durable: str = "points-shop-earn"
    ) -> None:
        """Wait until points' durable consumer has acknowledged every republished message it takes
        (its ack floor is at or past the last of them and nothing is pending): only then does the
        balance tell whether a redelivery took effect again."""
        nc = await nats.connect(self.peers.peers.nats_url)
        try:
            js = nc.jetstream()
            config = (await js.consumer_info("SHOP", durable)).config
            filters = config.filter_subjects or [config.filter_subject or ">"]
            taken = [seq for subject, seq in republished if any(_matches(f, subject) for f in filters)]
            assert taken, f"none of the republished subjects reaches {durable} (filters {filters})"

            async def acknowledged() -> bool:
                info = await js.consumer_info("SHOP", durable)
                return info.ack_floor.stream_seq >= max(taken) and not info.num_pending and not info.num_ack_pending

            await wait_until(acknowledged)
        finally:
            await nc.close()


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a trailing `>` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or token not in ("*", got[i]):
            return False
    return len(want) == len(got)


async def publish_identity_event(nats_url: str, subject: str, message: Any, member: str, event_id: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(
            subject,
            message.SerializeToString(),
            headers={"Nats-Msg-Id": event_id, "ce-id": event_id, "ce-subject": member, "ce-source": "kizuna/identity"},
        )
    finally:
        await nc.close()


async def _register(nats_url: str, member: str, event_id: str | None = None) -> None:
    """What identity publishes when a member registers (points opens their wallet on it)."""
    nc = await nats.connect(nats_url)
    try:
        ts = Timestamp()
        ts.FromDatetime(datetime.now(UTC))
        event_id = event_id or f"evt_register_{member}"
        await nc.jetstream().publish(
            "identity.member.registered",
            identity.MemberRegistered(member_id=member, display_name=member, registered_at=ts).SerializeToString(),
            headers={"Nats-Msg-Id": event_id, "ce-id": event_id, "ce-subject": member, "ce-source": "kizuna/identity"},
        )
    finally:
        await nc.close()


async def republish_shop_events(nats_url: str) -> list[tuple[str, int]]:
    """Publish every shop event again as a redelivery would (same event id, new NATS message id);
    returns each republished message's subject and stream sequence."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("SHOP")
        republished = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("SHOP", seq)
            headers = dict(msg.headers or {})
            headers["Nats-Msg-Id"] = f"{headers.get('ce-id')}-again-{uuid.uuid4().hex[:6]}"
            ack = await js.publish(msg.subject, msg.data or b"", headers=headers)
            republished.append((msg.subject, ack.seq))
        return republished
    finally:
        await nc.close()
