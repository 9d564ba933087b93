"""Operational hygiene: back-channel logout deliveries are retried until a client answers, expired
rows are cleaned up (safely by several replicas at once), service tokens are issued without a
database write yet stay revocable, and clients are registered over the HTTP admin API."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
from identity import cleanup
from identity.backchannel import BackchannelDelivery
from identity.sessions import OpSession
from identity.tokens import AccessToken, AuthorizationCode
from kizuna.kit.testing import wait_until
from sqlmodel import func, select

from .identity_support import (
    SVC_SECRET,
    WEB_SECRET,
    Idp,
    code_for,
    csrf_of,
    identity_settings,
    reset_streams,
    running_identity,
    sign_up,
)

ADMIN_SECRET = "admin-secret-0123456789abcdef"


class FlakyClient:
    """A client's back-channel logout endpoint that fails its first `failures` requests."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
        )
        body = await reader.readexactly(length)
        self.received.append(body)
        status = b"503 Service Unavailable" if len(self.received) <= self.failures else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def test_backchannel_logout_is_retried_with_backoff_until_delivered(nats_url: str, tmp_path: Path) -> None:
    await reset_streams(nats_url, "IDENTITY")
    flaky = FlakyClient(failures=2)
    server = await asyncio.start_server(flaky.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = {
        "client_id": "flaky",
        "client_secret": "flaky-secret-0123456789",
        "scopes": ["openid"],
        "redirect_uris": ["http://127.0.0.1:9/flaky/cb"],
        "backchannel_logout_uri": f"http://127.0.0.1:{port}/auth/backchannel-logout",
    }
    settings = identity_settings(
        nats_url,
        f"sqlite+aiosqlite:///{tmp_path / 'i.db'}",
        tmp_path,
        extra_clients=[client],
        identity_backchannel_retry_base_seconds=0.2,
        identity_backchannel_poll_seconds=0.1,
    )
    async with server, running_identity(settings) as idp:
        browser = idp.browser()
        await sign_up(browser, "flaky@example.com")
        await code_for(browser, client_id="flaky", redirect_uri="http://127.0.0.1:9/flaky/cb", scope="openid")
        page = await browser.get("/signout")
        await browser.post("/signout", data={"csrf_token": csrf_of(page.text)})

        async def delivered() -> BackchannelDelivery | None:
            async with idp.runtime.db.sessions() as session:
                row = (await session.exec(select(BackchannelDelivery))).one()
            return row if row.delivered_at is not None else None

        row = await wait_until(delivered, timeout=10)
        assert row.attempts == 3 and len(flaky.received) == 3 and row.client_id == "flaky"
        assert all(b"logout_token=" in body for body in flaky.received)
        await asyncio.sleep(0.5)
        assert len(flaky.received) == 3  # delivered: never sent again


async def test_cleanup_deletes_only_expired_rows_and_replicas_may_run_it_together(idp: Idp) -> None:
    browser = idp.browser()
    await sign_up(browser, "clean@example.com")
    await code_for(browser)  # a code that is never redeemed
    async with httpx.AsyncClient() as http:
        token = (
            await http.post(
                f"{idp.issuer}/token",
                auth=("svc", SVC_SECRET),
                data={"grant_type": "client_credentials", "scope": "points:read"},
            )
        ).json()
        # Revoking a service token leaves a deny-list row that must stay until the token expires.
        await http.post(f"{idp.issuer}/revoke", auth=("svc", SVC_SECRET), data={"token": token["access_token"]})
    settings = idp.runtime.settings

    async def counts() -> tuple[int, int, int]:
        async with idp.runtime.db.sessions() as session:
            return (
                (await session.exec(select(func.count()).select_from(AuthorizationCode))).one(),
                (await session.exec(select(func.count()).select_from(AccessToken))).one(),
                (await session.exec(select(func.count()).select_from(OpSession))).one(),
            )

    now = idp.provider.now()
    kept = await cleanup.clean_expired(
        idp.runtime.db, now, keep_seconds=settings.identity_cleanup_keep_seconds, signin_window_seconds=900
    )
    assert kept["codes"] == kept["access_tokens"] == kept["sessions"] == 0 and await counts() == (1, 1, 1)

    later = now + timedelta(days=30)  # everything above has expired and is older than the history kept
    results = await asyncio.gather(
        *(
            cleanup.clean_expired(
                idp.runtime.db, later, keep_seconds=settings.identity_cleanup_keep_seconds, signin_window_seconds=900
            )
            for _ in range(2)
        )
    )
    assert sum(r["codes"] for r in results) == 1 and sum(r["access_tokens"] for r in results) == 1
    assert sum(r["sessions"] for r in results) == 1 and await counts() == (0, 0, 0)


async def test_service_tokens_are_unrecorded_but_introspectable_and_revocable(idp: Idp) -> None:
    async with httpx.AsyncClient() as http:
        token_url = f"{idp.issuer}/token"
        issued = await http.post(
            token_url,
            auth=("svc", SVC_SECRET),
            data={"grant_type": "client_credentials", "scope": "points:read identity:read"},
        )
        assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store"
        token = issued.json()
        assert token["token_type"] == "Bearer" and token["scope"] == "points:read identity:read"
        async with idp.runtime.db.sessions() as session:
            assert (await session.exec(select(func.count()).select_from(AccessToken))).one() == 0

        wrong = await http.post(token_url, auth=("svc", "wrong"), data={"grant_type": "client_credentials"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
        assert wrong.headers["www-authenticate"].startswith("Basic")
        posted = await http.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": "svc",
                "client_secret": SVC_SECRET,
                "scope": "points:read",
            },
        )
        assert posted.status_code == 200
        public = await http.post(token_url, data={"grant_type": "client_credentials", "client_id": "spa"})
        assert public.status_code == 401 and public.json()["error"] == "invalid_client"
        unknown = await http.post(token_url, auth=("nobody", "x"), data={"grant_type": "client_credentials"})
        assert unknown.status_code == 401

        async def introspect() -> httpx.Response:
            return await http.post(
                f"{idp.issuer}/introspect", auth=("web", WEB_SECRET), data={"token": token["access_token"]}
            )

        active = (await introspect()).json()
        assert active["active"] is True and active["sub"] == "svc" and active["scope"] == "points:read identity:read"
        revoked = await http.post(
            f"{idp.issuer}/revoke", auth=("svc", SVC_SECRET), data={"token": token["access_token"]}
        )
        assert revoked.status_code == 200
        assert (await introspect()).json() == {"active": False}


async def test_admin_api_registers_clients_for_identity_admin_only(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    await reset_streams(nats_url, "IDENTITY")
    admin = {
        "client_id": "ops",
        "client_secret": ADMIN_SECRET,
        "grant_types": ["client_credentials"],
        "scopes": ["identity:admin"],
    }
    async with running_identity(identity_settings(nats_url, database_url, tmp_path, extra_clients=[admin])) as idp:
        async with httpx.AsyncClient(base_url=idp.issuer) as http:

            async def token(client: tuple[str, str], scope: str) -> str:
                response = await http.post(
                    "/token", auth=client, data={"grant_type": "client_credentials", "scope": scope}
                )
                assert response.status_code == 200, response.text
                return str(response.json()["access_token"])

            admin_token = {"Authorization": f"Bearer {await token(('ops', ADMIN_SECRET), 'identity:admin')}"}
            spec = {
                "client_id": "partner",
                "name": "Partner",
                "grant_types": ["client_credentials"],
                # A third-party client's own token may only take payments; it never reads members' data.
                "scopes": ["fintech:pay"],
            }

            assert (await http.post("/admin/clients", json=spec)).status_code == 401
            other = {"Authorization": f"Bearer {await token(('svc', SVC_SECRET), 'points:read')}"}
            assert (await http.post("/admin/clients", json=spec, headers=other)).status_code == 403

            created = await http.post("/admin/clients", json=spec, headers=admin_token)
            assert created.status_code == 201, created.text
            secret = created.json()["client_secret"]
            assert created.json()["scopes"] == ["fintech:pay"] and "secret_hash" not in created.json()
            assert (await http.post("/admin/clients", json=spec, headers=admin_token)).status_code == 409
            bad = await http.post(
                "/admin/clients", json={**spec, "client_id": "p2", "scopes": ["root"]}, headers=admin_token
            )
            assert bad.status_code == 400
            listed = (await http.get("/admin/clients", headers=admin_token)).json()
            assert "partner" in {c["client_id"] for c in listed}

            assert await token(("partner", secret), "fintech:pay")
            removed = await http.delete("/admin/clients/partner", headers=admin_token)
            assert removed.status_code == 204
            gone = await http.post("/token", auth=("partner", secret), data={"grant_type": "client_credentials"})
            assert gone.status_code == 401
            assert (await http.get("/admin/clients/partner", headers=admin_token)).status_code == 404
