"""Scopes and revocation at the provider, as an attacker would probe them: a third-party client
asking for member data on its own, GetMember without the member's consent to profile or email,
and every way access ends early publishing the revocation every service acts on."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
import nats.errors
import pytest
from kizuna.identity.v1 import events_pb2, identity_pb2, identity_pb2_grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.revocation import REVOCATION_SUBJECT
from nats.js.api import ConsumerConfig

from .identity_support import (
    SVC_SECRET,
    THIRD_SECRET,
    WEB_SECRET,
    Idp,
    code_for,
    csrf_of,
    exchange,
    identity_settings,
    running_identity,
    sign_in,
    sign_up,
)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


async def client_token(idp: Idp, client: tuple[str, str], scope: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{idp.issuer}/token", auth=client, data={"grant_type": "client_credentials", "scope": scope}
        )


async def revocations(nats_url: str, expected: int = 1) -> list[events_pb2.AccessRevoked]:
    """The revocation events identity published, read from its stream (waiting for `expected`)."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(REVOCATION_SUBJECT, config=ConsumerConfig(inactive_threshold=5))
        found: list[events_pb2.AccessRevoked] = []
        for _ in range(20):
            try:
                found += [events_pb2.AccessRevoked.FromString(m.data) for m in await sub.fetch(50, timeout=0.5)]
            except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
                pass
            if len(found) >= expected:
                break
        return found
    finally:
        await nc.close()


async def test_a_third_party_client_cannot_read_or_move_member_data_on_its_own(idp_sqlite: Idp) -> None:
    # Registered (like any third-party app) with points:read for its members' consent, it asks
    # identity for a client-credentials token that would read any member's points.
    for scope in ("points:read", "openid", "points:read profile"):
        refused = await client_token(idp_sqlite, ("thirdparty", THIRD_SECRET), scope)
        assert refused.status_code == 400, scope
        assert refused.json()["error"] == "invalid_scope"
        assert "access_token" not in refused.json()
    # An ecosystem service (first-party) still gets what it is registered for.
    allowed = await client_token(idp_sqlite, ("svc", SVC_SECRET), "points:read identity:read")
    assert allowed.status_code == 200
    assert claims_of(allowed.json()["access_token"])["scope"] == "points:read identity:read"


async def test_member_access_tokens_name_their_grant_and_session(idp_sqlite: Idp) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "bound@example.com")
    tokens = (await exchange(idp_sqlite, await code_for(browser))).json()
    first = claims_of(tokens["access_token"])
    assert first["grant_id"].startswith("grt_") and first["sid"]
    async with httpx.AsyncClient() as http:
        refreshed = (
            await http.post(
                f"{idp_sqlite.issuer}/token",
                auth=("web", WEB_SECRET),
                data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            )
        ).json()
    again = claims_of(refreshed["access_token"])
    assert (again["grant_id"], again["sid"]) == (first["grant_id"], first["sid"])
    assert again["jti"] != first["jti"]


async def test_get_member_shows_name_and_email_only_as_the_member_consented(idp_sqlite: Idp) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "private@example.com", name="Aiko")

    async def member_token(scope: str) -> str:
        return str((await exchange(idp_sqlite, await code_for(browser, scope=scope))).json()["access_token"])

    member_id = claims_of(await member_token("openid"))["sub"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{idp_sqlite.runtime.grpc_port}") as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)

        async def get(token: str) -> identity_pb2.Member:
            reply = await stub.GetMember(
                identity_pb2.GetMemberRequest(member_id=member_id), metadata=call_metadata(token), timeout=5
            )
            member: identity_pb2.Member = reply.member
            return member

        bare = await get(await member_token("openid"))
        assert (bare.member_id, bare.display_name, bare.email) == (member_id, "", "")
        named = await get(await member_token("openid profile"))
        assert (named.display_name, named.email) == ("Aiko", "")
        both = await get(await member_token("openid profile email"))
        assert (both.display_name, both.email) == ("Aiko", "private@example.com")
        service = (await client_token(idp_sqlite, ("svc", SVC_SECRET), "identity:read")).json()["access_token"]
        full = await get(service)
        assert (full.display_name, full.email) == ("Aiko", "private@example.com")


async def test_a_replayed_code_publishes_the_revocation_of_its_grant(idp_sqlite: Idp, nats_url: str) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "replay@example.com")
    code = await code_for(browser)
    first = (await exchange(idp_sqlite, code)).json()
    assert (await exchange(idp_sqlite, code)).json()["error"] == "invalid_grant"
    claims = claims_of(first["access_token"])
    events = await revocations(nats_url)
    assert [(e.grant_id, e.member_id) for e in events] == [(claims["grant_id"], claims["sub"])]
    event = events[0]
    assert event.expires_at.ToSeconds() >= claims["exp"], "kept at least as long as the token lives"


async def test_revoking_one_access_token_publishes_its_jti(idp_sqlite: Idp, nats_url: str) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "onetoken@example.com")
    token = (await exchange(idp_sqlite, await code_for(browser))).json()["access_token"]
    async with httpx.AsyncClient() as http:
        revoked = await http.post(f"{idp_sqlite.issuer}/revoke", data={"token": token}, auth=("web", WEB_SECRET))
    assert revoked.status_code == 200
    events = await revocations(nats_url)
    assert [(e.jti, e.grant_id) for e in events] == [(claims_of(token)["jti"], "")]


async def test_sign_out_everywhere_and_password_change_publish_revocations(idp_sqlite: Idp, nats_url: str) -> None:
    laptop, phone = idp_sqlite.browser(), idp_sqlite.browser()
    await sign_up(laptop, "careful@example.com")
    assert (await sign_in(phone, "careful@example.com")).status_code == 303
    session_scope = "openid profile points:read"
    on_phone = (await exchange(idp_sqlite, await code_for(phone, scope=session_scope))).json()["access_token"]
    on_laptop = (await exchange(idp_sqlite, await code_for(laptop, scope=session_scope))).json()["access_token"]

    # The password changes on the laptop: the phone's grant (another session) is revoked.
    page = await laptop.get("/account")
    changed = await laptop.post(
        "/account/password",
        data={
            "current_password": "correct horse battery",
            "new_password": "a brand new passphrase",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert "password is changed" in changed.text
    events = await revocations(nats_url)
    assert {e.grant_id for e in events} == {claims_of(on_phone)["grant_id"]}

    # Then sign out everywhere: the laptop's own grant goes too.
    page = await laptop.get("/account")
    ended = await laptop.post("/account/sessions/end-all", data={"csrf_token": csrf_of(page.text)})
    assert ended.status_code == 303
    events = await revocations(nats_url, expected=2)
    assert {e.grant_id for e in events} == {claims_of(on_phone)["grant_id"], claims_of(on_laptop)["grant_id"]}
    assert all(re.fullmatch(r"mbr_[0-9A-Z]{26}", e.member_id) for e in events)


@pytest.mark.parametrize("scope", ["points:credit", "identity:admin"])
async def test_third_party_cannot_get_service_scopes_even_if_registered_for_them(idp_sqlite: Idp, scope: str) -> None:
    refused = await client_token(idp_sqlite, ("thirdparty", THIRD_SECRET), scope)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


async def test_the_admin_api_refuses_service_scopes_for_a_third_party_client(nats_url: str, tmp_path: Path) -> None:
    admin = {
        "client_id": "ops",
        "client_secret": "ops-secret-0123456789abcdef-0123456789ab",
        "grant_types": ["client_credentials"],
        "scopes": ["identity:admin"],
    }
    url = f"sqlite+aiosqlite:///{tmp_path / 'identity.db'}"
    settings = identity_settings(nats_url, url, tmp_path, extra_clients=[admin])
    async with running_identity(settings) as idp, httpx.AsyncClient(base_url=idp.issuer) as http:
        token = (
            await http.post(
                "/token",
                auth=(str(admin["client_id"]), str(admin["client_secret"])),
                data={"grant_type": "client_credentials", "scope": "identity:admin"},
            )
        ).json()["access_token"]
        headers = {"authorization": f"Bearer {token}"}
        for scopes in (["points:credit"], ["openid", "identity:read"], ["privacy:export"], ["identity:admin"]):
            refused = await http.post(
                "/admin/clients", headers=headers, json={"client_id": "greedy-app", "scopes": scopes}
            )
            assert refused.status_code == 400, (scopes, refused.text)
            assert "service scopes" in refused.json()["message"]
        assert (await http.get("/admin/clients/greedy-app", headers=headers)).status_code == 404
        fine = await http.post(
            "/admin/clients", headers=headers, json={"client_id": "greedy-app", "scopes": ["openid", "points:read"]}
        )
        assert fine.status_code == 201, fine.text
