"""Token verification at a resource server, with keys fetched over real HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable

import pytest
from joserfc.jwk import ECKey
from kizuna.kit.auth import ServiceTokenClient, TokenVerifier
from kizuna.kit.errors import Unauthenticated, Unavailable
from kizuna.kit.testing import TestIssuer


@pytest.fixture
async def verifier(test_issuer: TestIssuer) -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier(test_issuer.issuer, "kizuna")
    yield v
    await v.aclose()


async def test_valid_member_and_service_tokens(verifier: TokenVerifier, test_issuer: TestIssuer) -> None:
    member = await verifier.verify(test_issuer.member_token("mbr_01", client_id="shop"))
    assert member.member_id == "mbr_01" and member.client_id == "shop"
    assert member.has_scope("points:spend")
    service = await verifier.verify(test_issuer.service_token("shop", "points:credit"))
    assert service.is_service and service.member_id is None


def _unsigned(token: str) -> str:
    _header, payload, _ = token.split(".")
    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "at+jwt"}).encode()).rstrip(b"=")
    return f"{none_header.decode()}.{payload}."


def _tampered(token: str) -> str:
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mbr_someone_else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{sig}"


@pytest.mark.parametrize(
    "make_token, reason",
    [
        (lambda i: i.member_token("mbr_01", expires_in=-120), "exp"),
        (lambda i: _tampered(i.member_token("mbr_01")), "signature"),
        (lambda i: _unsigned(i.member_token("mbr_01")), "algorithm"),
        (lambda i: i.member_token("mbr_01", audience="another-api"), "aud"),
        (lambda i: i.member_token("mbr_01", issuer="http://evil.example"), "iss"),
        (lambda i: i.member_token("mbr_01", key=ECKey.generate_key("P-256", auto_kid=True)), "unknown key"),
        (lambda i: i.member_token("mbr_01", header={"typ": "JWT"}), "typ"),
        (lambda i: "not-a-jwt", "malformed"),
    ],
    ids=["expired", "tampered", "alg-none", "wrong-audience", "wrong-issuer", "unknown-kid", "id-token-typ", "garbage"],
)
async def test_bad_tokens_are_rejected(
    verifier: TokenVerifier, test_issuer: TestIssuer, make_token: Callable[[TestIssuer], str], reason: str
) -> None:
    with pytest.raises(Unauthenticated) as err:
        await verifier.verify(make_token(test_issuer))
    assert reason in err.value.message or err.value.message.startswith("invalid token")


async def test_unknown_kid_refetches_jwks_at_most_once_per_floor(test_issuer: TestIssuer) -> None:
    verifier = TokenVerifier(test_issuer.issuer, refetch_floor_seconds=60)
    await verifier.verify(test_issuer.member_token("mbr_01"))
    fetched = verifier._fetched_at
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await verifier.verify(test_issuer.member_token("mbr_01", key=ECKey.generate_key("P-256", auto_kid=True)))
    assert verifier._fetched_at == fetched, "a flood of unknown kids must not hammer identity"
    await verifier.aclose()


async def test_rotated_key_is_picked_up(test_issuer: TestIssuer) -> None:
    verifier = TokenVerifier(test_issuer.issuer, refetch_floor_seconds=0)
    old = test_issuer.member_token("mbr_01")
    await verifier.verify(old)
    old_key, test_issuer.key = test_issuer.key, ECKey.generate_key("P-256", auto_kid=True)
    try:
        await verifier.verify(test_issuer.member_token("mbr_01"))
    finally:
        test_issuer.key = old_key
        await verifier.aclose()


async def test_service_token_client_caches_until_near_expiry(test_issuer: TestIssuer) -> None:
    test_issuer.register_client("shop", "s3cret", "points:credit points:read")
    client = ServiceTokenClient(test_issuer.issuer, "shop", "s3cret")
    first = await client.token("points:credit")
    assert await client.token("points:credit") == first
    verifier = TokenVerifier(test_issuer.issuer)
    principal = await verifier.verify(first)
    assert principal.is_service and principal.scopes == {"points:credit"}
    bad = ServiceTokenClient(test_issuer.issuer, "shop", "wrong")
    with pytest.raises(Unauthenticated):
        await bad.token("points:credit")
    for c in (client, bad, verifier):
        await c.aclose()


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (503, b'{"error": "temporarily_unavailable"}', Unavailable),
        (200, b"<html>a proxy's page</html>", Unavailable),
        (200, b'{"token_type": "Bearer"}', Unavailable),
        (200, b'{"access_token": 42}', Unavailable),
        (401, b'{"error": "invalid_client"}', Unauthenticated),
    ],
)
async def test_a_token_endpoint_that_fails_or_answers_no_token_is_unavailable_not_a_crash(
    status: int, body: bytes, error: type[Exception]
) -> None:
    # An issuer of its own: the session's is shared by the other tests.
    issuer = TestIssuer().start()
    issuer.register_client("shop", "s3cret", "points:read")
    issuer.token_answer = (status, body)
    client = ServiceTokenClient(issuer.issuer, "shop", "s3cret")
    try:
        with pytest.raises(error):
            await client.token("points:read")
    finally:
        await client.aclose()
        issuer.stop()


async def test_identity_out_of_reach_makes_a_service_token_unavailable() -> None:
    # Port 1: nothing listens there, so the connection is refused.
    client = ServiceTokenClient("http://127.0.0.1:1", "shop", "s3cret")
    try:
        with pytest.raises(Unavailable, match="identity cannot be reached for a service token"):
            await client.token("points:read")
    finally:
        await client.aclose()
