"""The ecosystem header and the home page on identity's own pages: `/_kizuna/me` answers for
identity's session with the member's live balance, read from a real points process with a token
identity mints for the member; the home page shows the balance, the campaigns live now, spends held
for checkouts and points being earned, in the member's language; when points is down the member is
still shown, without a balance."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
from kizuna.common.v1 import common_pb2
from kizuna.kit.auth import call_metadata
from kizuna.kit.testing import free_port, wait_until
from kizuna.kit.web import format_date
from kizuna.points.v1 import earning_pb2, points_pb2, points_pb2_grpc

from services.identity.tests.identity_support import (
    SVC_SECRET,
    csrf_of,
    identity_settings,
    reset_streams,
    running_identity,
    sign_up,
)

POINTS_CLIENT = {
    "client_id": "points",
    "client_secret": "points-secret-0123456789",
    "grant_types": ["client_credentials"],
    "scopes": ["points:read"],
}
# Runs campaigns at points and holds points for a checkout, as the shop does.
SHOP_CLIENT = {
    "client_id": "shop",
    "client_secret": "shop-secret-0123456789abcdef",
    "grant_types": ["client_credentials"],
    "scopes": ["points:admin", "points:spend"],
}
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def _part(html: str, marker: str, end: str) -> str:
    return html.split(marker)[1].split(end)[0]


async def test_identity_header_shows_the_member_and_live_points(
    nats_url: str, tmp_path: Path, service_process: Any
) -> None:
    await reset_streams(nats_url, "IDENTITY", "POINTS", "SHOP")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    points = service_process(
        "points",
        {"KIZUNA_ISSUER": issuer, "KIZUNA_CLIENT_SECRET": POINTS_CLIENT["client_secret"], "OUTBOX_POLL_SECONDS": "0.2"},
        wait=False,
    )
    settings = identity_settings(
        nats_url,
        f"sqlite+aiosqlite:///{tmp_path / 'identity.db'}",
        tmp_path / "identity",
        http_port=port,
        points_addr=points.grpc_address,
        extra_clients=[POINTS_CLIENT, SHOP_CLIENT],
    )
    async with running_identity(settings) as idp, httpx.AsyncClient() as http:
        # points' readiness includes identity's JWKS, so it becomes ready only now.
        await asyncio.to_thread(points.wait_ready, 90)
        browser = idp.browser()
        assert (await browser.get("/_kizuna/me")).json() == {"signed_in": False}
        landing = await browser.get("/")
        assert (
            landing.status_code == 200 and 'href="/signin"' in landing.text and "data-home-balance" not in landing.text
        )

        await sign_up(browser, "header@example.com", name="Haru")
        account = await browser.get("/account")
        member_id = account.text.split("data-member-id>")[1].split("<")[0]

        # points opens the wallet from identity.member.registered; then a service credits it.
        service_token = (
            await http.post(
                f"{issuer}/token",
                auth=("svc", SVC_SECRET),
                data={"grant_type": "client_credentials", "scope": "points:credit"},
            )
        ).json()["access_token"]
        async with grpc.aio.insecure_channel(points.grpc_address) as channel:
            stub = points_pb2_grpc.PointsServiceStub(channel)

            async def credited() -> bool:
                try:
                    await stub.Credit(
                        points_pb2.CreditRequest(
                            member_id=member_id,
                            amount=1_250,
                            kind=points_pb2.CREDIT_KIND_REGULAR,
                            reason="welcome",
                            idempotency_key=uuid.uuid4().hex,  # a NOT_FOUND answer is remembered per key
                        ),
                        metadata=call_metadata(service_token),
                        timeout=5,
                    )
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND, exc  # the wallet is not open yet
                    return False
                return True

            await wait_until(credited, timeout=30, interval=0.2)

        me = await browser.get("/_kizuna/me")
        assert me.headers["cache-control"] == "no-store"
        assert me.json() == {"signed_in": True, "name": "Haru", "points": 1_250}

        # The home page: balance, what expires when, recent activity in plain words.
        home = await browser.get("/")
        assert home.status_code == 200 and "Welcome back, Haru" in home.text
        balance = home.text.split("data-home-balance>")[1].split("</a>")[0]
        assert "1,250 pt" in balance
        expiring = home.text.split("data-home-expiring>")[1].split("</div>")[0]
        assert "1,250 pt" in expiring and "Nothing expires" not in expiring
        activity = home.text.split("data-home-activity>")[1].split("</section>")[0]
        assert "welcome" in activity.lower() and "+1,250 pt" in activity
        assert home.headers["x-frame-options"] == "DENY"
        assert "data-home-campaigns" not in home.text and "data-home-open" not in home.text

        await _campaigns_hold_and_earning(http, points, idp.provider, issuer, member_id, nats_url)
        now = datetime.now(UTC)

        async def open_items_shown() -> bool:
            return "data-earning" in (await browser.get("/")).text

        await wait_until(open_items_shown, timeout=30, interval=0.3)
        home = await browser.get("/")
        campaigns = _part(home.text, "data-home-campaigns>", "</section>")
        double = _part(campaigns, "Autumn double points", "</li>")
        assert "2\u00d7 points" in double and "At Shop, Travel" in double
        assert f"Until {format_date(now + timedelta(days=10), 'en')}" in double
        bonus = _part(campaigns, "First visit bonus", "</li>")
        assert "200 pt extra on every purchase" in bonus and "In every service" in bonus
        assert "On your first purchase at the service" in bonus
        # Soonest end first (points' order).
        assert campaigns.index("First visit bonus") < campaigns.index("Autumn double points")
        open_items = _part(home.text, "data-home-open>", "</section>")
        held = _part(open_items, "data-held>", "</tr>")
        assert "Held: Order 1042 at Kizuna Shop" in held and "-250 pt" in held and "Held</span>" in held
        assert f"until {format_date(now + timedelta(hours=2), 'en')}" in held
        earning = _part(open_items, "data-earning>", "</tr>")
        assert "Being earned</span>" in earning and "Granted when the purchase completes" in earning
        assert re.search(r"\+[\d,]+ pt", earning)
        assert "1,000 pt" in _part(home.text, "data-home-balance>", "</a>")

        # In Japanese: points' explanations in Japanese, dates as Japan writes them.
        browser.cookies.set("kz_lang", "ja")
        ja = await browser.get("/")
        campaigns = _part(ja.text, "data-home-campaigns>", "</section>")
        assert "開催中のキャンペーン" in campaigns and "ポイント2倍" in campaigns
        assert f"{format_date(now + timedelta(days=10), 'ja')}まで" in campaigns
        held = _part(ja.text, "data-held>", "</tr>")
        assert "保留中" in held and JAPANESE.search(held.split("</td>")[0]), held
        assert "Order 1042" not in held
        browser.cookies.delete("kz_lang")

        # The header's Sign out link leads to identity's own sign-out page.
        signout = await browser.get("/auth/logout")
        assert signout.status_code == 302 and signout.headers["location"] == "/signout"

        # points down: the member is still shown, the balance is unknown (not zero).
        points.stop()
        assert (await browser.get("/_kizuna/me")).json() == {"signed_in": True, "name": "Haru", "points": None}
        degraded = await browser.get("/")
        assert degraded.status_code == 200 and "Your points cannot be shown right now" in degraded.text

        page = await browser.get("/signout")
        await browser.post("/signout", data={"csrf_token": csrf_of(page.text)})
        assert (await browser.get("/_kizuna/me")).json() == {"signed_in": False}


async def _campaigns_hold_and_earning(
    http: httpx.AsyncClient, points: Any, provider: Any, issuer: str, member_id: str, nats_url: str
) -> None:
    """Two campaigns live at points, a checkout holding 250 points, a paid order earning points."""
    shop_token = (
        await http.post(
            f"{issuer}/token",
            auth=(str(SHOP_CLIENT["client_id"]), str(SHOP_CLIENT["client_secret"])),
            data={"grant_type": "client_credentials", "scope": "points:admin points:spend"},
        )
    ).json()["access_token"]
    now = datetime.now(UTC)
    for campaign in (
        {"name": "Autumn double points", "services": ["shop", "travel"], "multiplier": 2, "days": 10},
        {"name": "First visit bonus", "services": ["*"], "fixed_bonus": 200, "audience": "first_use", "days": 5},
    ):
        days = int(str(campaign.pop("days")))
        created = await http.post(
            f"{points.url}/admin/campaigns",
            headers={"Authorization": f"Bearer {shop_token}"},
            json={
                **campaign,
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(days=days)).isoformat(),
                "points_expire_at": (now + timedelta(days=days + 30)).isoformat(),
            },
        )
        assert created.status_code == 201, created.text
    # The member's own authorization for the spend, as the shop's checkout holds it.
    member_token, _jti, _exp = provider.issuer.access_token(
        subject=member_id, client_id="shop", scope="points:spend", lifetime=300, now=provider.now()
    )
    async with grpc.aio.insecure_channel(points.grpc_address) as channel:
        await points_pb2_grpc.PointsServiceStub(channel).Reserve(
            points_pb2.ReserveRequest(
                member_id=member_id,
                amount=250,
                ttl_seconds=2 * 3600,
                reason="Order 1042 at Kizuna Shop",
                source_service="shop",
                source_ref="o-1042",
                idempotency_key=uuid.uuid4().hex,
            ),
            metadata=call_metadata(shop_token, member_token),
            timeout=5,
        )
    nc = await nats.connect(nats_url)
    try:
        purchase = earning_pb2.Purchase(
            reference="o-1043",
            member_id=member_id,
            paid=common_pb2.Money(amount_minor=10_000, currency="JPY"),
            label="order o-1043",
        )
        await nc.jetstream().publish(
            "shop.purchase.paid", earning_pb2.PurchasePaid(purchase=purchase).SerializeToString()
        )
    finally:
        await nc.close()
