"""The kit's PaymentsClient (what shop, travel and any new service take card payments with), against
the real fintech service: token per call, the member's consent, idempotency keys, declines as
answers and refusals as domain errors naming fintech."""

from __future__ import annotations

import pytest
from kizuna.kit.auth import ServiceTokenClient
from kizuna.kit.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied, Unavailable
from kizuna.kit.payments import PaymentsClient

from .fintech_world import FintechClient, new_member


async def test_a_service_authorizes_captures_refunds_and_voids_through_the_kit_client(fintech: FintechClient) -> None:
    fintech.issuer.register_client("bookstore", "bookstore-secret", "fintech:pay")
    tokens = ServiceTokenClient(fintech.issuer.issuer, "bookstore", "bookstore-secret")
    client = PaymentsClient(f"127.0.0.1:{fintech.runtime.grpc_port}", tokens, service="bookstore")
    member = new_member()
    await fintech.apply_card(member)
    limit = (await fintech.card(member))["available_minor"]
    consent = fintech.issuer.member_token(member, scope="fintech:pay")
    try:
        auth = await client.authorize(
            member_id=member, amount_minor=3000, currency="JPY", member_token=consent, key="b1:authorize"
        )
        assert auth.approved and auth.decline_reason == ""
        # A retried step with the same key is the same authorization, not a second hold.
        again = await client.authorize(
            member_id=member, amount_minor=3000, currency="JPY", member_token=consent, key="b1:authorize"
        )
        assert again == auth
        assert (await fintech.card(member))["available_minor"] == limit - 3000
        with pytest.raises(AlreadyExists, match=r"^fintech: "):
            await client.authorize(
                member_id=member, amount_minor=3001, currency="JPY", member_token=consent, key="b1:authorize"
            )

        capture_id = await client.capture(auth.authorization_id, "b1:capture", amount_minor=2500, currency="JPY")
        assert capture_id
        assert await client.capture(auth.authorization_id, "b1:capture", amount_minor=2500, currency="JPY") == (
            capture_id
        )
        assert (await fintech.card(member))["available_minor"] == limit - 2500
        assert await client.refund(auth.authorization_id, "b1:refund", amount_minor=500, currency="JPY") == 500
        assert await client.refund(auth.authorization_id, "b1:refund-rest") == 2000
        assert (await fintech.card(member))["available_minor"] == limit

        second = await client.authorize(
            member_id=member, amount_minor=700, currency="JPY", member_token=consent, key="b2:authorize"
        )
        assert await client.void(second.authorization_id, "b2:void") == 700
        with pytest.raises(FailedPrecondition, match=r"^fintech: "):
            await client.capture(second.authorization_id, "b2:capture")
        assert (await fintech.card(member))["available_minor"] == limit

        # A decline is an answer with its reason, not an error.
        declined = await client.authorize(
            member_id=member, amount_minor=limit + 1, currency="JPY", member_token=consent, key="b3:authorize"
        )
        assert not declined.approved and declined.decline_reason.startswith("DECLINE_REASON_")
        with pytest.raises(NotFound, match=r"^fintech: "):
            await client.capture("auth_unknown", "b4:capture")
        # Only the member can let a service charge their card: another member's token is refused.
        with pytest.raises(PermissionDenied):
            await client.authorize(
                member_id=member,
                amount_minor=100,
                currency="JPY",
                member_token=fintech.issuer.member_token(new_member(), scope="fintech:pay"),
                key="b5:authorize",
            )
        assert (await fintech.card(member))["available_minor"] == limit
    finally:
        await client.close()
        await tokens.aclose()


async def test_without_a_client_secret_the_kit_client_says_so(fintech: FintechClient) -> None:
    client = PaymentsClient(f"127.0.0.1:{fintech.runtime.grpc_port}", None, service="bookstore")
    with pytest.raises(Unavailable, match="bookstore has no client secret"):
        await client.capture("auth_x", "k")
