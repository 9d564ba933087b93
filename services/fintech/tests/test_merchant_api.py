"""Partner merchants outside the ecosystem charge a card by its number over REST, with their own
client-credentials token; card purchases there post like any other."""

from __future__ import annotations

from .fintech_world import FintechClient, new_member


async def test_partner_merchant_authorizes_captures_and_refunds_by_card_number(fintech: FintechClient) -> None:
    member = new_member()
    card = await fintech.apply_card(member)
    merchant = fintech.merchant_headers("partner-cafe")
    auth = await fintech.http.post(
        "/merchant/v1/authorizations",
        json={
            "card_number": card["card_number"],
            "amount_minor": 1_200,
            "description": "Cafe Kizuna",
            "idempotency_key": "o-1",
        },
        headers=merchant,
    )
    assert auth.status_code == 200, auth.text
    assert auth.json()["status"] == "approved"
    authorization_id = auth.json()["authorization_id"]
    captured = await fintech.http.post(
        f"/merchant/v1/authorizations/{authorization_id}/capture", json={"idempotency_key": "c-1"}, headers=merchant
    )
    assert captured.status_code == 200 and captured.json()["captured_minor"] == 1_200
    view = await fintech.card(member)
    assert view["owed_minor"] == 1_200 and view["transactions"][0]["description"] == "Cafe Kizuna"
    refund = await fintech.http.post(
        "/merchant/v1/refunds",
        json={"capture_id": captured.json()["capture_id"], "amount_minor": 200, "idempotency_key": "r-1"},
        headers=merchant,
    )
    assert refund.status_code == 200 and refund.json()["refunded_minor"] == 200
    assert (await fintech.card(member))["owed_minor"] == 1_000

    # Another partner cannot touch this authorization; a member token is not a merchant.
    other = await fintech.http.post(
        f"/merchant/v1/authorizations/{authorization_id}/void",
        json={"idempotency_key": "v-1"},
        headers=fintech.merchant_headers("partner-other"),
    )
    assert other.status_code == 404
    as_member = await fintech.http.post(
        "/merchant/v1/authorizations",
        json={"card_number": card["card_number"], "amount_minor": 100, "idempotency_key": "o-2"},
        headers=fintech.member_headers(member),
    )
    assert as_member.status_code == 403
    no_scope = await fintech.http.post(
        "/merchant/v1/authorizations",
        json={"card_number": card["card_number"], "amount_minor": 100, "idempotency_key": "o-3"},
        headers=fintech.merchant_headers("partner-cafe", scope="fintech:read"),
    )
    assert no_scope.status_code == 403


async def test_unknown_or_closed_card_numbers_are_refused(fintech: FintechClient) -> None:
    member = new_member()
    card = await fintech.apply_card(member)
    merchant = fintech.merchant_headers()
    unknown = await fintech.http.post(
        "/merchant/v1/authorizations",
        json={"card_number": "9990000000000000", "amount_minor": 100, "idempotency_key": "u-1"},
        headers=merchant,
    )
    assert unknown.status_code == 404 and unknown.json()["message"] == "unknown card number"
    await fintech.http.post("/api/card/status", json={"status": "closed"}, headers=fintech.member_headers(member))
    closed = await fintech.http.post(
        "/merchant/v1/authorizations",
        json={"card_number": card["card_number"], "amount_minor": 100, "idempotency_key": "u-2"},
        headers=merchant,
    )
    assert closed.status_code == 409 and "closed" in closed.json()["message"]
    # The number is not stored anywhere: only its keyed hash and last four digits.
    async with fintech.ctx.db.sessions() as session:
        from fintech.models import Card
        from sqlmodel import select

        stored = (await session.exec(select(Card))).one()
    assert card["card_number"] not in repr(stored.model_dump())
