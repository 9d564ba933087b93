"""Running the shop in-process against peers, and driving it through its HTTP API like a client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nats
from kizuna.kit.oidc_client import WebSession, WebSignIn
from kizuna.kit.service import Runtime
from kizuna.kit.telemetry import configure_telemetry
from kizuna.kit.testing import TestIssuer
from kizuna.kit.testing import reset_streams as reset_streams
from shop.service import service
from shop.settings import Settings
from shop.wiring import Shop, shop_of

SHOP_SECRET = "shop-test-secret"
SHOP_SCOPES = "points:spend points:credit points:read fintech:pay"
ADMIN = "mbr_admin"
# What a member's token carries when they shop: the shop may read and spend their points and charge their card.
MEMBER_SCOPE = "points:read points:spend fintech:pay fintech:read shop:read shop:order shop:sell"


@asynccontextmanager
async def running_shop(
    *, nats_url: str, database_url: str, issuer: TestIssuer, points_addr: str, fintech_addr: str, **overrides: Any
) -> AsyncIterator[Runtime[Settings]]:
    configure_telemetry("shop")
    issuer.register_client("shop", SHOP_SECRET, SHOP_SCOPES)
    # Pages wait for earn previews as long as a loaded test machine may need: the tests look at
    # which badges show and how points is asked, not at how fast it answers.
    overrides.setdefault("earn_preview_budget_seconds", 30.0)
    settings = Settings(
        nats_url=nats_url,
        kizuna_issuer=issuer.issuer,
        database_url=database_url,
        http_port=0,
        grpc_port=0,
        points_addr=points_addr,
        fintech_addr=fintech_addr,
        kizuna_client_secret=SHOP_SECRET,
        shop_admins=[ADMIN],
        outbox_poll_seconds=0.2,
        jobs_interval_seconds=3600,
        log_format="text",
        **overrides,
    )
    async with service.running(settings) as runtime:
        yield runtime


@dataclass
class ShopClient:
    """The shop's JSON API as members, merchants and admins use it (the shop in this process or another)."""

    issuer: TestIssuer
    http: httpx.AsyncClient

    def token(self, member_id: str) -> str:
        return self.issuer.member_token(member_id, scope=MEMBER_SCOPE)

    async def call(
        self, method: str, path: str, member: str | None = None, json: Any = None, params: Any = None
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token(member)}"} if member else {}
        return await self.http.request(method, path, headers=headers, json=json, params=params)

    async def ok(self, method: str, path: str, member: str | None = None, json: Any = None, params: Any = None) -> Any:
        resp = await self.call(method, path, member, json, params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def active_merchant(self, owner: str, name: str = "Test Merchant") -> str:
        merchant = await self.ok("POST", "/api/merchants", owner, {"name": name})
        await self.ok("POST", f"/api/admin/merchants/{merchant['id']}/verify", ADMIN)
        return str(merchant["id"])

    async def product(
        self,
        merchant_id: str,
        owner: str,
        *,
        price: int = 1000,
        stock: int = 5,
        title: str = "Green tea",
        category: str = "food",
        description: str = "",
    ) -> str:
        body = {
            "title": title,
            "description": description,
            "price_minor": price,
            "currency": "JPY",
            "stock": stock,
            "category": category,
        }
        return str((await self.ok("POST", f"/api/merchants/{merchant_id}/products", owner, body))["id"])

    async def stock(self, product_id: str) -> int:
        return int((await self.ok("GET", f"/api/products/{product_id}"))["stock"])

    async def checkout(
        self, member: str, points: int = 0, key: str | None = None, merchant_id: str | None = None
    ) -> httpx.Response:
        body = {"idempotency_key": key or uuid.uuid4().hex, "points": points, "merchant_id": merchant_id}
        return await self.call("POST", "/api/checkout", member, body)


@dataclass
class ShopApi(ShopClient):
    """The shop running in this process, and its JSON API."""

    runtime: Runtime[Settings]

    @property
    def shop(self) -> Shop:
        return shop_of(self.runtime)

    async def browser(self, member: str | None, name: str = "Hana") -> httpx.AsyncClient:
        """A browser on the shop's pages, its single sign-on check done; signed in as `member` (None:
        anonymous) the way the kit's /auth/callback leaves one: a session row and its signed cookie."""
        # The shop's relying party, as the kit builds it from the shop's client id and secret.
        rp = WebSignIn(
            issuer=self.issuer.issuer,
            client_id="shop",
            client_secret=SHOP_SECRET,
            base_url=str(self.http.base_url),
            db=self.runtime.db,
        )
        client = httpx.AsyncClient(base_url=str(self.http.base_url), timeout=30)
        client.cookies.set(rp.sso_checked_cookie, "1")
        try:
            if member is not None:
                now = datetime.now(UTC)
                row = WebSession(
                    id=uuid.uuid4().hex,
                    member_id=member,
                    display_name=name,
                    sid="sid-" + member,
                    id_token="unused",
                    access_token=self.issuer.member_token(member, scope=MEMBER_SCOPE),
                    refresh_token=None,
                    access_expires_at=now + timedelta(minutes=5),
                    created_at=now,
                    expires_at=now + timedelta(hours=1),
                )
                async with self.runtime.db.transaction() as session:
                    session.add(row)
                client.cookies.set(rp.session_cookie, rp.session_cookie_value(row.id))
        finally:
            await rp.aclose()
        return client


@asynccontextmanager
async def shop_api(runtime: Runtime[Settings], issuer: TestIssuer) -> AsyncIterator[ShopApi]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=30) as http:
        yield ShopApi(issuer, http, runtime)


async def shop_events(nats_url: str) -> list[tuple[str, bytes]]:
    """Every event on the SHOP stream so far (subject, payload), oldest first."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("SHOP")
        found: list[tuple[str, bytes]] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await js.get_msg("SHOP", seq)
            assert msg.subject is not None, "a stored message has its subject"
            found.append((msg.subject, msg.data or b""))
        return found
    finally:
        await nc.close()
