"""The account center's password checks: throttled like sign-in, and a password change that ends
the member's other sessions (with their back-channel logouts) and revokes their refresh tokens."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import parse_qs

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet
from kizuna.kit.testing import wait_until

from .identity_support import (
    PASSWORD,
    WEB_SECRET,
    Idp,
    code_for,
    csrf_of,
    exchange,
    identity_settings,
    reset_streams,
    running_identity,
    sign_in,
    sign_up,
)

NEW_PASSWORD = "a brand new passphrase"


async def refresh(idp: Idp, refresh_token: str, client: tuple[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{idp.issuer}/token", auth=client, data={"grant_type": "refresh_token", "refresh_token": refresh_token}
        )


async def test_email_and_password_forms_are_throttled_like_sign_in(idp_sqlite: Idp) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "oracle@example.com")
    for n in range(5):  # the failures of both forms count together, per account
        page = await browser.get("/account")
        if n % 2:
            wrong = await browser.post(
                "/account/email",
                data={"email": "thief@example.com", "password": f"guess number {n}", "csrf_token": csrf_of(page.text)},
            )
        else:
            wrong = await browser.post(
                "/account/password",
                data={
                    "current_password": f"guess number {n}",
                    "new_password": NEW_PASSWORD,
                    "csrf_token": csrf_of(page.text),
                },
            )
        assert wrong.status_code == 401 and "current password is not correct" in wrong.text

    # Now even the right password gets no answer about whether it is right.
    page = await browser.get("/account")
    email = await browser.post(
        "/account/email", data={"email": "thief@example.com", "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    )
    password = await browser.post(
        "/account/password",
        data={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "csrf_token": csrf_of(page.text)},
    )
    assert email.status_code == 429 and password.status_code == 429
    assert "Too many failed attempts" in password.text
    # Nothing changed, and the sign-in page on this device shares the same counter.
    account = await browser.get("/account")
    assert "oracle@example.com" in account.text and "thief@example.com" not in account.text
    assert (await sign_in(browser, "oracle@example.com")).status_code == 429


class BackchannelReceiver:
    """A client's back-channel logout endpoint: records each logout token it is sent."""

    def __init__(self) -> None:
        self.logout_tokens: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
        )
        body = (await reader.readexactly(length)).decode()
        self.logout_tokens.extend(parse_qs(body).get("logout_token", []))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def test_password_change_ends_other_sessions_and_revokes_their_refresh_tokens(
    nats_url: str, tmp_path: Path
) -> None:
    await reset_streams(nats_url, "IDENTITY")
    receiver = BackchannelReceiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    secret = "phoneapp-secret-0123456789"
    app = {
        "client_id": "phoneapp",
        "client_secret": secret,
        "scopes": ["openid", "offline_access"],
        "redirect_uris": ["http://127.0.0.1:9/phoneapp/cb"],
        "backchannel_logout_uri": f"http://127.0.0.1:{port}/auth/backchannel-logout",
    }
    settings = identity_settings(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'i.db'}", tmp_path, extra_clients=[app])
    async with server, running_identity(settings) as idp:
        laptop, phone = idp.browser(), idp.browser()
        await sign_up(laptop, "rotate@example.com")
        assert (await sign_in(phone, "rotate@example.com")).status_code == 303
        # The phone holds an offline refresh token (it would outlive a plain sign-out).
        phone_code = await code_for(
            phone, client_id="phoneapp", redirect_uri=app["redirect_uris"][0], scope="openid offline_access"
        )
        phone_tokens = (
            await exchange(
                idp, phone_code, client_id="phoneapp", secret=secret, redirect_uri="http://127.0.0.1:9/phoneapp/cb"
            )
        ).json()
        phone_sid = jwt.decode(phone_tokens["id_token"], KeySet.import_key_set(idp.provider.keys.jwks())).claims["sid"]
        laptop_tokens = (await exchange(idp, await code_for(laptop))).json()

        page = await laptop.get("/account")
        changed = await laptop.post(
            "/account/password",
            data={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "csrf_token": csrf_of(page.text)},
        )
        assert changed.status_code == 200 and "password is changed" in changed.text

        # The phone is signed out and its refresh token is dead; the laptop carries on.
        assert (await phone.get("/account")).status_code == 302
        phone_refresh = await refresh(idp, phone_tokens["refresh_token"], ("phoneapp", secret))
        assert phone_refresh.status_code == 400 and phone_refresh.json()["error"] == "invalid_grant"
        assert (await laptop.get("/account")).status_code == 200
        assert (await refresh(idp, laptop_tokens["refresh_token"], ("web", WEB_SECRET))).status_code == 200

        # The phone's app hears about the ended session over the back channel, like any logout.
        async def delivered() -> bool:
            return bool(receiver.logout_tokens)

        await wait_until(delivered, timeout=10)
        claims = jwt.decode(receiver.logout_tokens[0], KeySet.import_key_set(idp.provider.keys.jwks())).claims
        assert claims["sid"] == phone_sid and claims["aud"] == "phoneapp"
        assert json.dumps(claims["events"]) == '{"http://schemas.openid.net/event/backchannel-logout": {}}'
