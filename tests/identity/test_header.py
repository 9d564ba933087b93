"""The ecosystem header on identity's own pages: `/_kizuna/me` answers for identity's session with
the member's live balance, read from a real points process with a token identity mints for the
member; when points is down the member is still shown, without a balance."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
from kizuna.kit.auth import call_metadata
from kizuna.kit.testing import free_port, wait_until
from kizuna.points.v1 import points_pb2, points_pb2_grpc

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


async def test_identity_header_shows_the_member_and_live_points(
    nats_url: str, tmp_path: Path, service_process: Any
) -> None:
    await reset_streams(nats_url, "IDENTITY", "POINTS")
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
        extra_clients=[POINTS_CLIENT],
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
