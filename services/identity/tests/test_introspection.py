"""Introspection (RFC 7662) answers only the token's own client and the ecosystem's first-party
services; any other client, however well authenticated, learns nothing: `{"active": false}`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from .identity_support import (
    SVC_SECRET,
    THIRD_SECRET,
    WEB_SECRET,
    Idp,
    code_for,
    exchange,
    identity_settings,
    reset_streams,
    running_identity,
    sign_up,
)

ADMIN = {
    "client_id": "ops",
    "client_secret": "ops-secret-0123456789abcdef",
    "grant_types": ["client_credentials"],
    "scopes": ["identity:admin"],
}


async def introspect(idp: Idp, token: str, client: tuple[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{idp.issuer}/introspect", data={"token": token}, auth=client)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_only_the_tokens_client_and_first_party_services_may_introspect(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    await reset_streams(nats_url, "IDENTITY")
    settings = identity_settings(nats_url, database_url, tmp_path, extra_clients=[ADMIN])
    async with running_identity(settings) as idp, httpx.AsyncClient(base_url=idp.issuer) as http:
        admin = await http.post(
            "/token",
            auth=(str(ADMIN["client_id"]), str(ADMIN["client_secret"])),
            data={"grant_type": "client_credentials", "scope": "identity:admin"},
        )
        partner = await http.post(
            "/admin/clients",
            json={"client_id": "partner", "grant_types": ["client_credentials"], "scopes": ["fintech:pay"]},
            headers={"Authorization": f"Bearer {admin.json()['access_token']}"},
        )
        assert partner.status_code == 201, partner.text
        partner_auth = ("partner", partner.json()["client_secret"])

        browser = idp.browser()
        await sign_up(browser, "private@example.com")
        member = (await exchange(idp, await code_for(browser))).json()  # issued to "web"

        # A third-party client registered through the admin API sees nothing of a member's tokens.
        assert await introspect(idp, member["access_token"], partner_auth) == {"active": False}
        assert await introspect(idp, member["refresh_token"], partner_auth) == {"active": False}
        # Neither does a configured third-party client.
        assert await introspect(idp, member["access_token"], ("thirdparty", THIRD_SECRET)) == {"active": False}

        # Its own token it may introspect; the token's client and first-party services may too.
        own = await http.post(
            "/token", auth=partner_auth, data={"grant_type": "client_credentials", "scope": "fintech:pay"}
        )
        mine = await introspect(idp, own.json()["access_token"], partner_auth)
        assert mine["active"] is True and mine["client_id"] == "partner"
        by_owner = await introspect(idp, member["access_token"], ("web", WEB_SECRET))
        assert by_owner["active"] is True and by_owner["client_id"] == "web"
        by_service = await introspect(idp, member["access_token"], ("svc", SVC_SECRET))
        assert by_service["active"] is True and by_service["sub"] == by_owner["sub"]
