"""The fintech service for tests: running in this process on a fresh database (SQLite and
PostgreSQL), real NATS, a real token issuer; a client that calls it over real gRPC and HTTP, and a
signed-in browser for its pages. The fixtures are imported by this folder's conftest and by the
cross-service tests that run fintech beside a real points process (`tests/fintech`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from fintech import ledger
from fintech.context import Fintech, fintech_of
from fintech.service import service as fintech_service
from fintech.settings import Settings
from kizuna.common.v1.common_pb2 import Money
from kizuna.fintech.v1 import fintech_pb2, fintech_pb2_grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.service import Runtime
from kizuna.kit.testing import TestIssuer, reset_streams


def new_member() -> str:
    return f"mbr_{uuid.uuid4().hex[:16]}"


@dataclass
class FintechClient:
    """Talks to a running fintech service the way other services and members do."""

    runtime: Runtime[Any]
    issuer: TestIssuer
    http: httpx.AsyncClient
    channel: grpc.aio.Channel

    @property
    def ctx(self) -> Fintech:
        return fintech_of(self.runtime)

    @property
    def payments(self) -> fintech_pb2_grpc.PaymentsServiceStub:
        return fintech_pb2_grpc.PaymentsServiceStub(self.channel)

    def member_headers(self, member_id: str, scope: str = "fintech:read fintech:pay points:spend") -> dict[str, str]:
        return {"authorization": f"Bearer {self.issuer.member_token(member_id, scope=scope)}"}

    def merchant_headers(self, client_id: str = "partner-cafe", scope: str = "fintech:pay") -> dict[str, str]:
        return {"authorization": f"Bearer {self.issuer.service_token(client_id, scope)}"}

    def pay_metadata(self, member_id: str | None, service: str = "shop", member_scope: str = "fintech:pay") -> Any:
        member_token = self.issuer.member_token(member_id, scope=member_scope) if member_id else None
        return call_metadata(self.issuer.service_token(service, "fintech:pay"), member_token)

    async def apply_card(self, member_id: str, income: int = 3_000_000) -> dict[str, Any]:
        resp = await self.http.post(
            "/api/card/apply",
            json={"annual_income_minor": income, "idempotency_key": uuid.uuid4().hex},
            headers=self.member_headers(member_id),
        )
        assert resp.status_code == 201, resp.text
        issued: dict[str, Any] = resp.json()
        return issued

    async def card(self, member_id: str) -> dict[str, Any]:
        resp = await self.http.get("/api/card", headers=self.member_headers(member_id))
        assert resp.status_code == 200, resp.text
        card: dict[str, Any] = resp.json()
        return card

    async def open_bank(self, member_id: str, top_up: int = 0) -> None:
        resp = await self.http.post("/api/bank/account", headers=self.member_headers(member_id))
        assert resp.status_code == 201, resp.text
        if top_up:
            resp = await self.http.post(
                "/api/bank/top-up",
                json={"amount_minor": top_up, "idempotency_key": uuid.uuid4().hex},
                headers=self.member_headers(member_id),
            )
            assert resp.status_code == 200, resp.text

    async def bank_balance(self, member_id: str) -> int:
        resp = await self.http.get("/api/bank", headers=self.member_headers(member_id))
        assert resp.status_code == 200, resp.text
        return int(resp.json()["balance_minor"])

    async def authorize(
        self,
        member_id: str,
        amount: int,
        key: str | None = None,
        *,
        currency: str = "JPY",
        service: str = "shop",
        merchant: str = "shop",
        timeout: float = 10,
    ) -> fintech_pb2.AuthorizeResponse:
        response: fintech_pb2.AuthorizeResponse = await self.payments.Authorize(
            fintech_pb2.AuthorizeRequest(
                member_id=member_id,
                amount=Money(amount_minor=amount, currency=currency),
                merchant=fintech_pb2.Merchant(merchant_id=merchant, name="Kizuna Shop"),
                idempotency_key=key or uuid.uuid4().hex,
            ),
            metadata=self.pay_metadata(member_id, service),
            timeout=timeout,
        )
        return response

    async def capture(
        self, authorization_id: str, amount: int | None = None, key: str | None = None, service: str = "shop"
    ) -> fintech_pb2.CaptureResponse:
        request = fintech_pb2.CaptureRequest(authorization_id=authorization_id, idempotency_key=key or uuid.uuid4().hex)
        if amount is not None:
            request.amount.CopyFrom(Money(amount_minor=amount, currency="JPY"))
        response: fintech_pb2.CaptureResponse = await self.payments.Capture(
            request, metadata=self.pay_metadata(None, service), timeout=10
        )
        return response


def fintech_settings(nats_url: str, database_url: str, issuer: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "kizuna_issuer": issuer,
        "database_url": database_url,
        "http_port": 0,
        "grpc_port": 0,
        "outbox_poll_seconds": 0.2,
        "log_format": "text",
        "statement_interval_seconds": 3600,
        "sweep_interval_seconds": 3600,  # tests run a sweep when they mean to
        "kizuna_client_secret": "fintech-web-test-secret",
        "card_token_key": "fintech-test-card-token-key-0123456789",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def fintech_overrides() -> dict[str, Any]:
    """Override in a test module to change the service's settings."""
    return {}


@pytest.fixture
def streams_to_reset() -> list[str]:
    """Streams emptied before the service starts (a module that starts consumers first overrides it)."""
    return ["FINTECH"]


@pytest.fixture
async def fintech(
    nats_url: str,
    database_url: str,
    test_issuer: TestIssuer,
    fintech_overrides: dict[str, Any],
    streams_to_reset: list[str],
) -> AsyncIterator[FintechClient]:
    await reset_streams(nats_url, *streams_to_reset)
    settings = fintech_settings(nats_url, database_url, test_issuer.issuer, **fintech_overrides)
    async with fintech_service.running(settings) as runtime:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=15) as http:
            yield FintechClient(runtime, test_issuer, http, channel)
        await channel.close()
        # Whatever the test did, the books still balance.
        async with runtime.db.sessions() as session:
            report = await ledger.audit(session)
        assert report.ok, report.problems


async def signed_in_browser(fintech: FintechClient, member_id: str, name: str = "Hana") -> httpx.AsyncClient:
    """A browser holding a kit web session for the member, as `/auth/callback` leaves it after
    sign-in at identity (the sign-in itself is the kit's and identity's to test); its access token
    is a real one from the test issuer, which points trusts."""
    from datetime import timedelta

    from kizuna.kit.db import utcnow
    from kizuna.kit.oidc_client import WebSession, WebSignIn

    settings = fintech.ctx.settings
    # The service's relying party as the kit configures it: the same client, so the same cookie.
    rp = WebSignIn(
        issuer=settings.kizuna_issuer,
        client_id=settings.kizuna_client_id or "fintech",
        client_secret=settings.kizuna_client_secret,
        base_url=str(fintech.http.base_url),
        db=fintech.ctx.db,
    )
    await rp.aclose()
    now = utcnow()
    sid = uuid.uuid4().hex
    token = fintech.issuer.member_token(member_id, scope="openid points:read points:spend fintech:read fintech:pay")
    async with fintech.ctx.db.transaction() as session:
        session.add(
            WebSession(
                id=sid,
                member_id=member_id,
                display_name=name,
                id_token="unused",
                access_token=token,
                access_expires_at=now + timedelta(minutes=5),
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
    browser = httpx.AsyncClient(base_url=str(fintech.http.base_url), timeout=15)
    browser.cookies.set(rp.session_cookie, rp.session_cookie_value(sid))
    return browser
