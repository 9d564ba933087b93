"""Single sign-on across two kit-based services and identity, then logout everywhere:
RP-initiated logout at one service ends the identity session and, over the back channel, the
local sessions at every service the member used."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
from kizuna.kit.auth import TokenVerifier
from kizuna.kit.oidc_client import WebSession
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.testing import free_port
from sqlmodel import select

from services.identity.tests.identity_support import (
    authorize,
    csrf_of,
    identity_settings,
    query_of,
    reset_streams,
    running_identity,
)

from .relying_party import relying_party


def rp_client(name: str, port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    return {
        "client_id": name,
        "client_secret": f"{name}-secret-0123456789",
        "redirect_uris": [f"{base}/auth/callback"],
        "post_logout_redirect_uris": [f"{base}/"],
        "backchannel_logout_uri": f"{base}/auth/backchannel-logout",
        "scopes": ["openid", "profile", "email", "offline_access", "points:read"],
    }


def rp_settings(nats_url: str, tmp_path: Path, name: str, port: int, issuer: str) -> ServiceSettings:
    return ServiceSettings(
        nats_url=nats_url,
        kizuna_issuer=issuer,
        database_url=f"sqlite+aiosqlite:///{tmp_path / name}.db",
        http_port=port,
        grpc_port=0,
        log_format="text",
    )


async def test_single_sign_on_then_logout_everywhere(nats_url: str, database_url: str, tmp_path: Path) -> None:
    await reset_streams(nats_url, "IDENTITY", "SHOPDEMO", "TRAVELDEMO")
    ports = {"shopdemo": free_port(), "traveldemo": free_port()}
    # Access tokens shorter than the RP's 30 s refresh margin: every use at shop refreshes.
    settings = identity_settings(
        nats_url,
        database_url,
        tmp_path,
        extra_clients=[rp_client(n, p) for n, p in ports.items()],
        identity_access_token_seconds=20,
    )
    async with AsyncExitStack() as stack:
        idp = await stack.enter_async_context(running_identity(settings))
        rps = {
            name: await stack.enter_async_context(
                relying_party(name, f"{name}-secret-0123456789").running(
                    rp_settings(nats_url, tmp_path, name, port, idp.issuer)
                )
            )
            for name, port in ports.items()
        }
        shop, travel = (f"http://127.0.0.1:{p}" for p in ports.values())
        browser = httpx.AsyncClient(follow_redirects=True, timeout=10)

        # 1. A protected page at shop sends the browser to identity, which asks for a password.
        page = await browser.get(f"{shop}/private")
        assert page.url.path == "/signin" and str(page.url).startswith(idp.issuer)
        next_url = query_of(str(page.url))["next"]
        signup_page = await browser.get(f"{idp.issuer}/signup", params={"next": next_url})
        done = await browser.post(
            f"{idp.issuer}/signup",
            data={
                "email": "sso@example.com",
                "display_name": "Sora",
                "password": "correct horse battery",
                "next": next_url,
                "csrf_token": csrf_of(signup_page.text),
            },
        )
        assert str(done.url) == f"{shop}/private", done.text[:300]
        member_id = done.json()["member_id"]
        assert member_id.startswith("mbr_") and done.json()["name"] == "Sora"

        # The member's token, kept server-side at shop, is a kizuna access token for other services.
        async def shop_session() -> WebSession:
            async with rps["shopdemo"].db.sessions() as session:
                return (await session.exec(select(WebSession))).one()

        before = await shop_session()
        token = (await browser.get(f"{shop}/token")).json()["access_token"]
        principal = await TokenVerifier(idp.issuer).verify(token)
        assert principal.member_id == member_id and principal.client_id == "shopdemo"
        # That was a refresh: rotated refresh token and a fresh ID token (kept as the logout hint).
        after = await shop_session()
        assert after.refresh_token != before.refresh_token and after.id_token != before.id_token
        assert token == after.access_token != before.access_token

        # 2. Travel: no password; the silent check at identity signs the member in (SSO).
        seen = await browser.get(f"{travel}/maybe")
        assert seen.json() == {"member_id": member_id}
        assert not any(r.url.path == "/signin" for r in seen.history)

        # 3. Sign out at shop (RP-initiated): identity ends the session, tells both services.
        # GET only asks; a POST without the CSRF token (a cross-site form) signs nobody out.
        confirm = await browser.get(f"{shop}/auth/logout")
        assert confirm.status_code == 200 and 'action="/auth/logout"' in confirm.text
        forged = await browser.post(f"{shop}/auth/logout", data={"csrf_token": "forged"})
        assert forged.status_code == 403
        tokenless = await browser.post(f"{shop}/auth/logout", data={})
        assert tokenless.status_code == 200 and 'action="/auth/logout"' in tokenless.text
        assert (await browser.get(f"{shop}/private")).json()["member_id"] == member_id
        out = await browser.post(f"{shop}/auth/logout", data={"csrf_token": csrf_of(confirm.text)})
        assert str(out.url) == f"{shop}/" and out.json() == {"service": "shopdemo"}
        for name, runtime in rps.items():
            async with runtime.db.sessions() as session:
                rows = (await session.exec(select(WebSession))).all()
            assert rows and all(r.ended_at is not None for r in rows), name
        travel_after = await browser.get(f"{travel}/private", follow_redirects=False)
        assert travel_after.status_code == 303 and travel_after.headers["location"].startswith("/auth/login")

        # 4. The identity session is gone: prompt=none now answers login_required.
        silent = await authorize(
            browser.__class__(base_url=idp.issuer, cookies=browser.cookies),
            client_id="traveldemo",
            redirect_uri=f"{travel}/auth/callback",
            prompt="none",
            scope="openid",
        )
        assert query_of(silent.headers["location"])["error"] == "login_required"
        maybe = await browser.get(f"{travel}/maybe")
        assert maybe.json() == {"member_id": None}


async def test_backchannel_logout_rejects_forged_tokens(nats_url: str, tmp_path: Path) -> None:
    await reset_streams(nats_url, "IDENTITY", "SHOPDEMO")
    port = free_port()
    settings = identity_settings(
        nats_url, f"sqlite+aiosqlite:///{tmp_path / 'i.db'}", tmp_path, extra_clients=[rp_client("shopdemo", port)]
    )
    async with (
        running_identity(settings) as idp,
        relying_party("shopdemo", "shopdemo-secret-0123456789").running(
            rp_settings(nats_url, tmp_path, "shopdemo", port, idp.issuer)
        ),
    ):
        now = int(idp.provider.now().timestamp())
        base = {
            "iss": idp.issuer,
            "aud": "shopdemo",
            "iat": now,
            "exp": now + 60,
            "jti": "j",
            "sub": "mbr_x",
            "sid": "s",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{port}/auth/backchannel-logout"
            good = idp.provider.issuer.sign(base, typ="logout+jwt")
            assert (await http.post(url, data={"logout_token": good})).status_code == 200
            for bad in (
                idp.provider.issuer.sign({**base, "aud": "other"}, typ="logout+jwt"),
                idp.provider.issuer.sign({**base, "events": {}}, typ="logout+jwt"),
                idp.provider.issuer.sign({**base, "nonce": "n"}, typ="logout+jwt"),
                idp.provider.issuer.sign(base, typ="JWT"),
                good[:-4] + "AAAA",
            ):
                assert (await http.post(url, data={"logout_token": bad})).status_code == 400
