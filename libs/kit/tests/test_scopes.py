"""Scopes at the resource server, and revocation reaching a service that verifies tokens locally."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import nats
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2
from kizuna.kit.auth import CallAuth, DenyList, Principal, TokenVerifier, member_scope, service_scope
from kizuna.kit.errors import DomainError, InsufficientScope, PermissionDenied, Unauthenticated
from kizuna.kit.events import ensure_stream
from kizuna.kit.revocation import REVOCATION_SUBJECT, RevocationFeed
from kizuna.kit.testing import TestIssuer, reset_streams, wait_until


@pytest.fixture
async def verifier(test_issuer: TestIssuer) -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier(test_issuer.issuer, "kizuna")
    yield v
    await v.aclose()


Reader = Annotated[Principal, Depends(member_scope("bank:read"))]
Payer = Annotated[Principal, Depends(member_scope("bank:pay"))]
Partner = Annotated[Principal, Depends(service_scope("bank:settle"))]


@pytest.fixture
async def api(verifier: TokenVerifier) -> AsyncIterator[httpx.AsyncClient]:
    """A FastAPI app with the kit's error mapping and three routes that each declare a scope."""
    app = FastAPI()
    app.state.runtime = SimpleNamespace(verifier=verifier)

    @app.exception_handler(DomainError)
    async def _domain_error(_request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.code, "message": exc.message}, status_code=exc.http_status, headers=exc.headers
        )

    @app.get("/balance")
    async def balance(member: Reader) -> dict[str, str]:
        return {"member": member.subject}

    @app.post("/transfers")
    async def transfer(member: Payer) -> dict[str, str]:
        return {"member": member.subject}

    @app.post("/settlements")
    async def settle(caller: Partner) -> dict[str, str]:
        return {"client": caller.client_id}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bank.test") as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_a_token_without_the_routes_scope_is_refused_with_insufficient_scope(
    api: httpx.AsyncClient, test_issuer: TestIssuer
) -> None:
    only_profile = test_issuer.member_token("mbr_01", scope="openid profile", client_id="third-party")
    resp = await api.post("/transfers", headers=_bearer(only_profile))
    assert resp.status_code == 403
    assert resp.json()["error"] == "insufficient_scope"
    assert resp.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="bank:pay"'
    # A read scope does not move money either.
    reader = test_issuer.member_token("mbr_01", scope="openid bank:read")
    assert (await api.get("/balance", headers=_bearer(reader))).status_code == 200
    assert (await api.post("/transfers", headers=_bearer(reader))).status_code == 403
    payer = test_issuer.member_token("mbr_01", scope="openid bank:pay")
    assert (await api.post("/transfers", headers=_bearer(payer))).json() == {"member": "mbr_01"}


async def test_missing_or_bad_token_gets_an_invalid_token_challenge(api: httpx.AsyncClient) -> None:
    resp = await api.get("/balance")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    resp = await api.get("/balance", headers=_bearer("not.a.jwt"))
    assert resp.status_code == 401 and "invalid_token" in resp.headers["www-authenticate"]


async def test_member_routes_refuse_service_tokens_and_service_routes_refuse_members(
    api: httpx.AsyncClient, test_issuer: TestIssuer
) -> None:
    service = test_issuer.service_token("partner", "bank:read bank:settle")
    assert (await api.get("/balance", headers=_bearer(service))).status_code == 403
    assert (await api.post("/settlements", headers=_bearer(service))).json() == {"client": "partner"}
    member = test_issuer.member_token("mbr_01", scope="bank:settle")
    assert (await api.post("/settlements", headers=_bearer(member))).status_code == 403
    no_scope = test_issuer.service_token("partner", "bank:read")
    resp = await api.post("/settlements", headers=_bearer(no_scope))
    assert resp.status_code == 403 and resp.json()["error"] == "insufficient_scope"


async def test_call_auth_reads_need_the_members_scope_or_a_service_scope(
    verifier: TokenVerifier, test_issuer: TestIssuer
) -> None:
    service = await verifier.verify(test_issuer.service_token("shop", "orders:read"))
    member = await verifier.verify(test_issuer.member_token("mbr_01", scope="openid", client_id="third-party"))
    reader = await verifier.verify(test_issuer.member_token("mbr_01", scope="orders:read"))
    # The member's own token without the read scope is refused, whoever passes it on.
    for auth in (CallAuth(caller=member, member=member), CallAuth(caller=service, member=member)):
        with pytest.raises(InsufficientScope):
            auth.require_member_or_service("mbr_01", "orders:read", "orders:read")
    assert CallAuth(caller=reader, member=reader).require_member_or_service("mbr_01", "orders:read", "x") is reader
    with pytest.raises(PermissionDenied):
        CallAuth(caller=reader, member=reader).require_member_or_service("mbr_02", "orders:read", "orders:read")
    # A service on its own needs the service scope.
    assert CallAuth(caller=service, member=None).require_member_or_service("mbr_02", "x", "orders:read") is service
    with pytest.raises(InsufficientScope):
        CallAuth(caller=service, member=None).require_member_or_service("mbr_02", "x", "orders:admin")


# ---- the deny-list ---------------------------------------------------------------------------


async def test_deny_list_refuses_tokens_of_a_revoked_grant_session_token_or_member(
    verifier: TokenVerifier, test_issuer: TestIssuer
) -> None:
    now = time.time()
    grant_token = test_issuer.member_token("mbr_01", grant_id="grt_A", sid="sid_A")
    other_grant = test_issuer.member_token("mbr_01", grant_id="grt_B", sid="sid_B")
    await verifier.verify(grant_token)
    verifier.deny_list.add("grant:grt_A", expires_at=now + 300)
    with pytest.raises(Unauthenticated, match="revoked"):
        await verifier.verify(grant_token)
    await verifier.verify(other_grant)
    verifier.deny_list.add("sid:sid_B", expires_at=now + 300)
    with pytest.raises(Unauthenticated, match="revoked"):
        await verifier.verify(other_grant)
    # Member-wide: tokens issued up to the cut-off are refused, later ones (a new sign-in) pass.
    old = test_issuer.member_token("mbr_02", iat=int(now) - 60)
    verifier.deny_list.add("member:mbr_02", expires_at=now + 300, issued_up_to=now - 30)
    with pytest.raises(Unauthenticated):
        await verifier.verify(old)
    await verifier.verify(test_issuer.member_token("mbr_02", iat=int(now)))
    # An entry past its expiry no longer refuses (the tokens it named are expired anyway).
    verifier.deny_list.add("jti:j1", expires_at=now - 1)
    await verifier.verify(test_issuer.member_token("mbr_03", jti="j1"))


def test_deny_list_is_bounded_and_drops_what_expires_soonest() -> None:
    deny = DenyList(max_entries=3)
    now = time.time()
    for i, ttl in enumerate([50, 10, 40, 30]):
        deny.add(f"grant:g{i}", expires_at=now + ttl)
    assert len(deny) == 3
    assert deny.denies({"grant_id": "g1"}, now) is None  # the soonest to expire went
    assert deny.denies({"grant_id": "g0"}, now) == "grant"
    assert deny.denies({"grant_id": "g3"}, now) == "grant"


# ---- the feed from identity's stream -------------------------------------------------------------


def _stamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


async def _publish(js: nats.js.JetStreamContext, event: events_pb2.AccessRevoked) -> None:
    await js.publish(REVOCATION_SUBJECT, event.SerializeToString())


async def test_revocation_feed_learns_past_and_new_revocations(
    nats_url: str, verifier: TokenVerifier, test_issuer: TestIssuer
) -> None:
    await reset_streams(nats_url, "IDENTITY")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    feed = RevocationFeed(js, verifier.deny_list, lookback_seconds=600, retry_seconds=0.1)
    try:
        await ensure_stream(js, "identity")
        now = datetime.now(UTC)
        # Revoked before this process started: learned from the stream's recent past.
        await _publish(
            js,
            events_pb2.AccessRevoked(
                grant_id="grt_old", revoked_at=_stamp(now), expires_at=_stamp(now + timedelta(minutes=5))
            ),
        )
        old = test_issuer.member_token("mbr_01", grant_id="grt_old")
        await feed.start()
        assert feed.subscribed
        assert await _refused(verifier, old), "start() returns once the past revocations are applied"

        fresh = test_issuer.member_token("mbr_01", grant_id="grt_new")
        await verifier.verify(fresh)
        started = time.monotonic()
        await _publish(js, events_pb2.AccessRevoked(grant_id="grt_new", revoked_at=_stamp(datetime.now(UTC))))
        await wait_until(lambda: _refused(verifier, fresh), timeout=2, interval=0.005)
        assert time.monotonic() - started < 2.0
        # Undecodable bytes are logged and skipped; the feed keeps going.
        await js.publish(REVOCATION_SUBJECT, b"\xff\xff\xff")
        later = test_issuer.member_token("mbr_02", sid="sid_later")
        await _publish(js, events_pb2.AccessRevoked(session_id="sid_later", revoked_at=_stamp(datetime.now(UTC))))
        await wait_until(lambda: _refused(verifier, later), timeout=2)
    finally:
        await feed.stop()
        await nc.close()


async def test_revocation_feed_waits_for_identitys_stream(
    nats_url: str, verifier: TokenVerifier, test_issuer: TestIssuer
) -> None:
    await reset_streams(nats_url, "IDENTITY")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    feed = RevocationFeed(js, verifier.deny_list, retry_seconds=0.05)
    try:
        await feed.start()
        assert not feed.subscribed
        await ensure_stream(js, "identity")
        await wait_until(lambda: _true(feed.subscribed), timeout=5)
        token = test_issuer.member_token("mbr_09", grant_id="grt_9")
        await _publish(
            js, events_pb2.AccessRevoked(member_id="mbr_09", member_wide=True, revoked_at=_stamp(datetime.now(UTC)))
        )
        await wait_until(lambda: _refused(verifier, token), timeout=2)
    finally:
        await feed.stop()
        await nc.close()


async def _true(value: bool) -> bool:
    return value


async def _refused(verifier: TokenVerifier, token: str) -> bool:
    try:
        await verifier.verify(token)
    except Unauthenticated:
        return True
    await asyncio.sleep(0)
    return False


async def test_revocation_feed_runs_with_a_services_own_nats_permissions(
    nats_server: Any, nats_url: str, verifier: TokenVerifier, test_issuer: TestIssuer
) -> None:
    """Every service follows identity's revocations with its own, least-privilege NATS user."""
    service_env = getattr(nats_server, "service_env", None)
    if service_env is None or not service_env("points"):
        pytest.skip("this NATS server does not enforce per-service permissions")
    from kizuna.kit import natsauth

    env = service_env("points")
    await reset_streams(nats_url, "IDENTITY")
    admin = await nats.connect(nats_url)
    points = await nats.connect(
        **natsauth.connect_options("points", env["NATS_URL"], env["NATS_USER"], env["NATS_PASSWORD"])
    )
    feed = RevocationFeed(points.jetstream(), verifier.deny_list, retry_seconds=0.1)
    try:
        await ensure_stream(admin.jetstream(), "identity")
        await feed.start()
        assert feed.subscribed
        token = test_issuer.member_token("mbr_07", grant_id="grt_7")
        revoked = events_pb2.AccessRevoked(grant_id="grt_7", revoked_at=_stamp(datetime.now(UTC)))
        await _publish(admin.jetstream(), revoked)
        await wait_until(lambda: _refused(verifier, token), timeout=2)
    finally:
        await feed.stop()
        await points.close()
        await admin.close()


async def test_a_starting_service_has_learned_every_recent_revocation_before_it_serves(
    nats_url: str, verifier: TokenVerifier, test_issuer: TestIssuer
) -> None:
    await reset_streams(nats_url, "IDENTITY")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    feed = RevocationFeed(js, verifier.deny_list)
    try:
        await ensure_stream(js, "identity")
        now = datetime.now(UTC)
        for i in range(300):
            await _publish(js, events_pb2.AccessRevoked(grant_id=f"grt_{i}", revoked_at=_stamp(now)))
        await feed.start()
        assert feed.backlog == 300
        for i in (0, 150, 299):
            assert await _refused(verifier, test_issuer.member_token("mbr_01", grant_id=f"grt_{i}"))
        await verifier.verify(test_issuer.member_token("mbr_01", grant_id="grt_300"))
    finally:
        await feed.stop()
        await nc.close()


async def test_a_removed_clients_own_tokens_are_refused(verifier: TokenVerifier, test_issuer: TestIssuer) -> None:
    from kizuna.kit.revocation import apply

    before = test_issuer.service_token("partner", "fintech:pay", iat=int(time.time()) - 10)
    member_via_partner = test_issuer.member_token("mbr_05", client_id="partner", iat=int(time.time()) - 10)
    other = test_issuer.service_token("shop", "points:credit", iat=int(time.time()) - 10)
    revoked_at = datetime.now(UTC) - timedelta(seconds=5)
    keys = apply(
        verifier.deny_list,
        events_pb2.AccessRevoked(client_id="partner", client_wide=True, revoked_at=_stamp(revoked_at)),
        lookback_seconds=600,
    )
    assert keys == ["client:partner"]
    for token in (before, member_via_partner):
        with pytest.raises(Unauthenticated, match="revoked"):
            await verifier.verify(token)
    await verifier.verify(other)
    # A client registered again under the same id afterwards gets tokens that work.
    await verifier.verify(test_issuer.service_token("partner", "fintech:pay"))
