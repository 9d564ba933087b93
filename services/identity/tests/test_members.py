"""Members and the account center: registration (events on NATS), profile/email/password changes,
sessions and connected clients, consent for third-party clients, gRPC GetMember, admin CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import grpc
import httpx
import nats
import pytest
from kizuna.identity.v1 import events_pb2, identity_pb2, identity_pb2_grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.testing import wait_until
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from .identity_support import (
    PASSWORD,
    SVC_SECRET,
    Idp,
    authorize,
    code_for,
    csrf_of,
    exchange,
    query_of,
    sign_in,
    sign_up,
)


async def events(nats_url: str, subject: str) -> list[Msg]:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(subject, config=ConsumerConfig(inactive_threshold=5))
        try:
            return list(await sub.fetch(50, timeout=3))
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
            return []
    finally:
        await nc.close()


def member_id_of(html: str) -> str:
    match = re.search(r"data-member-id>(mbr_[0-9A-Z]{26})<", html)
    assert match, html[:500]
    return match.group(1)


async def test_registration_publishes_the_member_id_once_and_emails_are_unique(idp: Idp, nats_url: str) -> None:
    browser = idp.browser()
    assert (await sign_up(browser, "  Ken@Example.COM", name="Ken")).status_code == 303
    member_id = member_id_of((await browser.get("/account")).text)

    again = await sign_up(idp.browser(), "ken@example.com", name="Other Ken")
    assert again.status_code == 409 and "already exists" in again.text
    weak = await sign_up(idp.browser(), "weak@example.com", password="short")
    assert weak.status_code == 400 and "at least 10 characters" in weak.text

    msgs = await events(nats_url, "identity.member.registered")
    assert len(msgs) == 1
    event = events_pb2.MemberRegistered.FromString(msgs[0].data)
    assert event.member_id == member_id and event.display_name == "Ken"
    assert msgs[0].headers is not None and msgs[0].headers["ce-subject"] == member_id

    page = await browser.get("/account")
    await browser.post("/account/profile", data={"display_name": "Kenji", "csrf_token": csrf_of(page.text)})
    wrong = await browser.post(
        "/account/email", data={"email": "kenji@example.com", "password": "nope", "csrf_token": csrf_of(page.text)}
    )
    assert wrong.status_code == 401
    await browser.post(
        "/account/email", data={"email": "kenji@example.com", "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    )
    changed = await browser.post(
        "/account/password",
        data={"current_password": PASSWORD, "new_password": "a brand new passphrase", "csrf_token": csrf_of(page.text)},
    )
    assert "password is changed" in changed.text
    updated: list[events_pb2.MemberUpdated] = []

    async def both_published() -> bool:  # the outbox relay publishes each after its commit
        nonlocal updated
        updated = [
            events_pb2.MemberUpdated.FromString(m.data) for m in await events(nats_url, "identity.member.updated")
        ]
        return len(updated) >= 2

    await wait_until(both_published, timeout=15, interval=0.3)
    assert [list(u.changed_fields) for u in updated] == [["display_name"], ["email"]]
    assert {u.member_id for u in updated} == {member_id}

    fresh = idp.browser()
    assert (await sign_in(fresh, "kenji@example.com")).status_code == 401
    assert (await sign_in(fresh, "kenji@example.com", "a brand new passphrase")).status_code == 303
    assert member_id_of((await fresh.get("/account")).text) == member_id  # the ID never changes

    async with httpx.AsyncClient() as http:
        service_token = (
            await http.post(
                f"{idp.issuer}/token",
                auth=("svc", SVC_SECRET),
                data={"grant_type": "client_credentials", "scope": "identity:read"},
            )
        ).json()["access_token"]
        other_token = (
            await http.post(
                f"{idp.issuer}/token",
                auth=("svc", SVC_SECRET),
                data={"grant_type": "client_credentials", "scope": "points:read"},
            )
        ).json()["access_token"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{idp.runtime.grpc_port}") as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.GetMember(identity_pb2.GetMemberRequest(member_id=member_id))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as unscoped:
            await stub.GetMember(
                identity_pb2.GetMemberRequest(member_id=member_id), metadata=call_metadata(other_token)
            )
        assert unscoped.value.code() == grpc.StatusCode.PERMISSION_DENIED
        metadata = call_metadata(service_token)
        reply = await stub.GetMember(identity_pb2.GetMemberRequest(member_id=member_id), metadata=metadata)
        assert reply.member.display_name == "Kenji" and reply.member.email == "kenji@example.com"
        assert reply.member.status == identity_pb2.MEMBER_STATUS_ACTIVE
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetMember(
                identity_pb2.GetMemberRequest(member_id="mbr_01ARZ3NDEKTSV4RRFFQ69G5FAV"), metadata=metadata
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_third_party_consent_is_asked_remembered_and_revocable(idp_sqlite: Idp) -> None:
    idp = idp_sqlite
    browser = idp.browser()
    await sign_up(browser, "consent@example.com")
    tp = {"client_id": "thirdparty", "redirect_uri": "http://127.0.0.1:9/tp/callback", "scope": "openid points:read"}

    page = await authorize(browser, **tp)
    assert page.status_code == 200 and 'data-scope="points:read"' in page.text
    assert query_of((await authorize(browser, prompt="none", **tp)).headers["location"])["error"] == "consent_required"
    form = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    denied = await browser.post("/authorize", data={**form, "consent": "deny"})
    assert query_of(denied.headers["location"])["error"] == "access_denied"
    allowed = await browser.post("/authorize", data={**form, "consent": "allow"})
    code = query_of(allowed.headers["location"])["code"]
    tokens = (
        await exchange(
            idp, code, client_id="thirdparty", secret="third-secret-0123456789abcdef", redirect_uri=tp["redirect_uri"]
        )
    ).json()

    # Remembered: the next authorization needs no page.
    assert "code" in query_of((await authorize(browser, **tp)).headers["location"])

    account = await browser.get("/account")
    assert 'data-client="thirdparty"' in account.text
    await browser.post("/account/clients/thirdparty/revoke", data={"csrf_token": csrf_of(account.text)})
    assert (await authorize(browser, **tp)).status_code == 200  # asked again
    async with httpx.AsyncClient() as http:
        intro = await http.post(
            f"{idp.issuer}/introspect",
            data={"token": tokens["access_token"]},
            auth=("web", "web-secret-0123456789abcdef"),
        )
    assert intro.json() == {"active": False}


async def test_account_center_ends_another_session(idp_sqlite: Idp) -> None:
    laptop, phone = idp_sqlite.browser(), idp_sqlite.browser()
    await sign_up(laptop, "two@example.com")
    await sign_in(phone, "two@example.com")
    code_for_phone = await code_for(phone)
    phone_tokens = (await exchange(idp_sqlite, code_for_phone)).json()
    page = await laptop.get("/account")
    sids = re.findall(r'data-session="([^"]+)"', page.text)
    assert len(sids) == 2
    current = re.search(r'data-session="([^"]+)"><td>[^<]*\(this browser\)', page.text)
    other = next(s for s in sids if not current or s != current.group(1))
    await laptop.post(f"/account/sessions/{other}/end", data={"csrf_token": csrf_of(page.text)})
    assert (await phone.get("/account")).status_code == 302
    assert (await laptop.get("/account")).status_code == 200
    # offline_access grants outlive the session; the phone's access token is still active.
    async with httpx.AsyncClient() as http:
        intro = await http.post(
            f"{idp_sqlite.issuer}/introspect",
            data={"token": phone_tokens["access_token"]},
            auth=("web", "web-secret-0123456789abcdef"),
        )
    assert intro.json()["active"] is True


async def test_admin_command_registers_a_client(idp_sqlite: Idp) -> None:
    settings = idp_sqlite.runtime.settings
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KIZUNA_DATA_DIR": str(settings.kizuna_data_dir),
        "NATS_URL": settings.nats_url,
        "KIZUNA_ISSUER": settings.kizuna_issuer,
        "KIZUNA_SCOPES": settings.kizuna_scopes,
    }
    spec = json.dumps(
        {"client_id": "partner", "grant_types": ["client_credentials"], "scopes": ["fintech:pay", "points:read"]}
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "identity", "register-client", spec],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout.strip().splitlines()[-1])
    async with httpx.AsyncClient() as http:
        token = await http.post(
            f"{idp_sqlite.issuer}/token",
            auth=("partner", created["client_secret"]),
            data={"grant_type": "client_credentials", "scope": "fintech:pay"},
        )
        # A third-party client never reads members' points on its own, whatever it is registered for.
        refused = await http.post(
            f"{idp_sqlite.issuer}/token",
            auth=("partner", created["client_secret"]),
            data={"grant_type": "client_credentials", "scope": "points:read"},
        )
    assert token.status_code == 200 and token.json()["scope"] == "fintech:pay"
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"
