"""Privacy across the ecosystem, from identity's account center, with real services on real NATS:
download my data (one archive, a silent service reported), delete my account (re-authentication,
erasure everywhere with back-channel logout, per-service progress, the member ID never reissued)."""

from __future__ import annotations

import io
import json
import zipfile
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path

import httpx
from identity import members
from kizuna.kit.oidc_client import WebSession
from kizuna.kit.service import Runtime
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.testing import free_port, wait_until
from sqlmodel import select

from services.identity.tests.identity_support import (
    PASSWORD,
    csrf_of,
    identity_settings,
    reset_streams,
    running_identity,
    sign_up,
)

from .privacy_service import privacy_service
from .test_sso import rp_client, rp_settings

NAMES = ("shopdemo", "traveldemo", "gonedemo")


async def test_download_then_delete_everywhere(nats_url: str, database_url: str, tmp_path: Path) -> None:
    await reset_streams(nats_url, "IDENTITY", *(n.upper() for n in NAMES))
    ports = {name: free_port() for name in NAMES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    settings = identity_settings(
        nats_url,
        database_url,
        tmp_path,
        extra_clients=[rp_client(n, p) for n, p in ports.items()],
        # The public links lead nowhere from here (as the ingress from a pod); identity fetches
        # each part through the internal ones.
        kizuna_links=json.dumps({"identity": "http://127.0.0.1:1", **{n: f"https://{n}.invalid" for n in NAMES}}),
        kizuna_internal_links=json.dumps(urls),
        identity_backchannel_retry_base_seconds=0.2,
        identity_backchannel_poll_seconds=0.2,
    )
    held: dict[str, dict[str, list[str]]] = {name: {} for name in NAMES}

    def start(name: str, issuer: str) -> AbstractAsyncContextManager[Runtime[ServiceSettings]]:
        settings_ = rp_settings(nats_url, tmp_path, name, ports[name], issuer)
        return privacy_service(name, f"{name}-secret-0123456789", held[name]).running(
            ServiceSettings(**{**settings_.model_dump(), "outbox_poll_seconds": 0.2})
        )

    async with AsyncExitStack() as stack:
        idp = await stack.enter_async_context(running_identity(settings))
        shop = await stack.enter_async_context(start("shopdemo", idp.issuer))
        await stack.enter_async_context(start("traveldemo", idp.issuer))
        # gonedemo is down for now.
        browser = httpx.AsyncClient(follow_redirects=True, timeout=10)

        # The member signs up via shop's pages (SSO session at identity, web session at shop).
        page = await browser.get(f"{urls['shopdemo']}/private")
        next_url = dict(httpx.URL(str(page.url)).params)["next"]
        signup = await browser.get(f"{idp.issuer}/signup", params={"next": next_url})
        done = await browser.post(
            f"{idp.issuer}/signup",
            data={
                "email": "Mei@Example.com",
                "display_name": "Mei",
                "password": PASSWORD,
                "next": next_url,
                "csrf_token": csrf_of(signup.text),
            },
        )
        member_id = done.json()["member_id"]
        held["shopdemo"][member_id] = ["order-1", "order-2"]
        held["traveldemo"][member_id] = ["stay-9"]
        held["shopdemo"]["mbr_someone_else"] = ["order-3"]

        # 1. Download my data: one zip, one JSON file per service; the silent one is reported.
        account = await browser.get(f"{idp.issuer}/account")
        no_csrf = await browser.post(f"{idp.issuer}/account/export", data={})
        assert no_csrf.status_code == 403
        export = await browser.post(f"{idp.issuer}/account/export", data={"csrf_token": csrf_of(account.text)})
        assert export.status_code == 200 and export.headers["content-type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(export.content))
        assert sorted(archive.namelist()) == sorted(["manifest.json", "identity.json", *(f"{n}.json" for n in NAMES)])
        files = {name: json.loads(archive.read(name)) for name in archive.namelist()}
        assert files["identity.json"]["data"]["member"]["email"] == "mei@example.com"
        assert files["shopdemo.json"]["data"] == {"orders": ["order-1", "order-2"]}
        assert files["shopdemo.json"]["member_id"] == member_id
        assert files["traveldemo.json"]["data"] == {"orders": ["stay-9"]}
        assert files["gonedemo.json"]["status"] == "unavailable"
        assert files["manifest.json"]["services"]["gonedemo"]["status"] == "unavailable"
        assert files["manifest.json"]["services"]["shopdemo"]["status"] == "included"

        # 2. Delete my account: a wrong password changes nothing.
        account = await browser.get(f"{idp.issuer}/account")
        wrong = await browser.post(
            f"{idp.issuer}/account/delete",
            data={"password": "not my password!", "confirm": "yes", "csrf_token": csrf_of(account.text)},
        )
        assert wrong.status_code == 401
        assert (await idp.provider.member(member_id)) is not None

        deleted = await browser.post(
            f"{idp.issuer}/account/delete",
            data={"password": PASSWORD, "confirm": "yes", "csrf_token": csrf_of(account.text)},
            follow_redirects=False,
        )
        assert deleted.status_code == 303
        progress_url = idp.issuer + deleted.headers["location"].split("?")[0]
        assert progress_url.startswith(f"{idp.issuer}/erasure/") and len(progress_url) > len(idp.issuer) + 40

        # Identity's own PII is gone; the ID stays retired; every session and grant has ended.
        async with idp.runtime.db.sessions() as session:
            row = await session.get(members.Member, member_id)
        assert row is not None and row.status == members.DELETED
        assert row.email == f"{member_id.lower()}@erased.invalid" and row.display_name == "Deleted member"
        assert (await browser.get(f"{idp.issuer}/account", follow_redirects=False)).status_code == 302
        # Back-channel logout reached shop: its web session for the member is over.
        async with shop.db.sessions() as session:
            web = (await session.exec(select(WebSession).where(WebSession.member_id == member_id))).all()
        assert web and all(w.ended_at is not None for w in web)

        # 3. Progress: the two running services confirm; gonedemo is awaited (page keeps refreshing).
        async def confirmed() -> bool:
            html = (await browser.get(progress_url)).text
            return (
                'data-service="shopdemo" data-done="yes"' in html
                and 'data-service="traveldemo" data-done="yes"' in html
            )

        await wait_until(confirmed, timeout=15)
        page = await browser.get(progress_url)
        assert 'data-service="gonedemo" data-done="no"' in page.text and 'http-equiv="refresh"' in page.text
        assert member_id not in held["shopdemo"] and held["shopdemo"]["mbr_someone_else"] == ["order-3"]
        assert (await browser.get(f"{idp.issuer}/erasure/not-the-link")).status_code == 404

        # gonedemo comes back, catches up from its durable consumer, and confirms: all done.
        held["gonedemo"][member_id] = ["x"]
        await stack.enter_async_context(start("gonedemo", idp.issuer))

        async def complete() -> bool:
            return "refresh" not in (await browser.get(progress_url)).text

        await wait_until(complete, timeout=15)
        assert member_id not in held["gonedemo"]

        # 4. The old credentials no longer work; the email is free and gets a *new* member ID.
        fresh = httpx.AsyncClient(base_url=idp.issuer, timeout=10)
        again = await sign_up(fresh, "mei@example.com", name="Mei again")
        assert again.status_code == 303
        async with idp.runtime.db.sessions() as session:
            new = await members.by_email(session, "mei@example.com")
        assert new is not None and new.id != member_id
