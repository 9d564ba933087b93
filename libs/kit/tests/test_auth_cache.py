"""A verified token is remembered until it expires: a repeat is not checked again, but expiry,
revocation and new keys still apply to it, and the memory is bounded."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from joserfc.jwk import ECKey
from kizuna.kit.auth import TokenVerifier
from kizuna.kit.errors import Unauthenticated
from kizuna.kit.testing import TestIssuer


@pytest.fixture
async def verifier(test_issuer: TestIssuer) -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier(test_issuer.issuer, "kizuna", leeway_seconds=30, cache_size=3)
    yield v
    await v.aclose()


async def test_a_repeat_is_the_same_principal(verifier: TokenVerifier, test_issuer: TestIssuer) -> None:
    token = test_issuer.member_token("mbr_01")
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first
    other = await verifier.verify(test_issuer.member_token("mbr_02"))
    assert other.member_id == "mbr_02"


async def test_a_remembered_token_still_expires(verifier: TokenVerifier, test_issuer: TestIssuer) -> None:
    token = test_issuer.member_token("mbr_01", expires_in=60)
    now = time.time()
    await verifier.verify(token, now=now)
    await verifier.verify(token, now=now + 60 + 29)  # within the leeway
    with pytest.raises(Unauthenticated):
        await verifier.verify(token, now=now + 60 + 31)
    with pytest.raises(Unauthenticated):
        await verifier.verify(token, now=now + 60 + 31)  # not remembered as valid again


async def test_a_remembered_token_can_be_revoked(verifier: TokenVerifier, test_issuer: TestIssuer) -> None:
    token = test_issuer.member_token("mbr_03")
    await verifier.verify(token)
    verifier.deny_list.add("member:mbr_03", expires_at=time.time() + 300, issued_up_to=time.time() + 1)
    with pytest.raises(Unauthenticated, match="revoked"):
        await verifier.verify(token)


async def test_a_forged_twin_is_not_taken_for_the_remembered_token(
    verifier: TokenVerifier, test_issuer: TestIssuer
) -> None:
    token = test_issuer.member_token("mbr_01")
    await verifier.verify(token)
    header, payload, signature = token.split(".")
    with pytest.raises(Unauthenticated):
        await verifier.verify(f"{header}.{payload}.{signature[:-2]}AA")


async def test_new_keys_forget_what_was_verified(test_issuer: TestIssuer) -> None:
    verifier = TokenVerifier(test_issuer.issuer, refetch_floor_seconds=0)
    try:
        token = test_issuer.member_token("mbr_01")
        await verifier.verify(token)
        old_key, test_issuer.key = test_issuer.key, ECKey.generate_key("P-256", auto_kid=True)
        try:
            await verifier.verify(test_issuer.member_token("mbr_01"))  # a new kid: the keys are fetched again
            with pytest.raises(Unauthenticated, match="unknown key"):
                await verifier.verify(token)  # its key left the JWKS: refused, not remembered
        finally:
            test_issuer.key = old_key
    finally:
        await verifier.aclose()


async def test_the_memory_is_bounded(verifier: TokenVerifier, test_issuer: TestIssuer) -> None:
    tokens = [test_issuer.member_token(f"mbr_{i}") for i in range(10)]
    for token in tokens:
        await verifier.verify(token)
    assert len(verifier._verified) == 3
    for token in tokens:  # the forgotten ones are verified again, not refused
        assert (await verifier.verify(token)).member_id is not None
