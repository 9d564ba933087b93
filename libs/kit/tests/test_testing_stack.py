"""The `ecosystem` fixture a service's tests are written against: real points and fintech
processes, a member with points and a card, and the kit's clients paying with both."""

from __future__ import annotations

import pytest
from kizuna.kit.errors import PermissionDenied
from kizuna.kit.payments import PaymentsClient
from kizuna.kit.points import PointsClient
from kizuna.kit.testing import wait_until
from kizuna.kit.testing_stack import Ecosystem

SCOPES = "points:read points:spend fintech:pay"


async def test_a_member_pays_with_points_and_card_through_the_kit_clients(ecosystem: Ecosystem) -> None:
    member = await ecosystem.member(points=800, card=True)
    assert (await ecosystem.balance(member.id)).total == 800
    limit = (await ecosystem.card(member.id))["available_minor"]
    assert limit >= 100_000

    tokens = ecosystem.service_tokens("bookstore", SCOPES)
    points = PointsClient(ecosystem.points_addr, tokens, service="bookstore")
    cards = PaymentsClient(ecosystem.fintech_addr, tokens, service="bookstore")
    try:
        reservation = await points.reserve(
            member_id=member.id, amount=300, member_token=member.token, reason="Book b1", ref="b1", key="b1:reserve"
        )
        auth = await cards.authorize(
            member_id=member.id, amount_minor=1700, currency="JPY", member_token=member.token, key="b1:authorize"
        )
        assert auth.approved
        await points.capture(reservation, "b1:capture-points")
        assert (await ecosystem.balance(member.id)).total == 500
        await cards.capture(auth.authorization_id, "b1:capture-card")

        # The card purchase earns about 1% back through the event fintech publishes: 17 pt on 1,700.
        async def earned() -> bool:
            return (await ecosystem.balance(member.id)).total == 517

        await wait_until(earned, timeout=15)
        card = await ecosystem.card(member.id)
        assert (card["available_minor"], card["owed_minor"]) == (limit - 1700, 1700)
        # The consent is the member's own: a token without fintech:pay does not let the service charge.
        with pytest.raises(PermissionDenied, match=r"^fintech: "):
            await cards.authorize(
                member_id=member.id,
                amount_minor=100,
                currency="JPY",
                member_token=member.token_for("points:read"),
                key="b2:authorize",
            )
    finally:
        await points.close()
        await cards.close()
        await tokens.aclose()


async def test_a_member_without_points_or_card(ecosystem: Ecosystem) -> None:
    member = await ecosystem.member(card=False)
    assert (await ecosystem.balance(member.id)).total == 0
    with pytest.raises(AssertionError, match="404"):
        await ecosystem.card(member.id)


def test_env_for_a_service_names_its_peers_and_its_client(ecosystem: Ecosystem) -> None:
    secret = ecosystem.register_client("bookstore", SCOPES)
    env = ecosystem.env_for("bookstore", secret)
    assert env["POINTS_ADDR"] == ecosystem.points.grpc_address
    assert env["FINTECH_ADDR"] == ecosystem.fintech.grpc_address
    assert (env["KIZUNA_CLIENT_ID"], env["KIZUNA_CLIENT_SECRET"]) == ("bookstore", secret)
    assert env["KIZUNA_ISSUER"] == ecosystem.issuer.issuer
