"""PaymentsService over real gRPC: holds, captures, voids, refunds, declines, idempotency, auth."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import nats
import pytest
from kizuna.common.v1.common_pb2 import Money
from kizuna.fintech.v1 import events_pb2, fintech_pb2
from kizuna.kit.testing import wait_until

from .fintech_world import FintechClient, new_member

APPROVED = fintech_pb2.AUTHORIZATION_STATUS_APPROVED
DECLINED = fintech_pb2.AUTHORIZATION_STATUS_DECLINED


async def test_authorize_capture_refund_moves_available_credit(fintech: FintechClient) -> None:
    member = new_member()
    card = await fintech.apply_card(member, income=3_000_000)
    assert card["credit_limit_minor"] == 300_000 and len(card["card_number"]) == 16
    assert card["card_number"].endswith(card["last4"])

    auth = await fintech.authorize(member, 10_000)
    assert auth.status == APPROVED and auth.available_credit.amount_minor == 290_000
    captured = await fintech.capture(auth.authorization_id, 8_000)
    assert captured.captured.amount_minor == 8_000 and captured.released.amount_minor == 2_000
    view = await fintech.card(member)
    assert view["available_minor"] == 292_000 and view["owed_minor"] == 8_000 and view["held_minor"] == 0
    assert [t["kind"] for t in view["transactions"]] == ["purchase"]

    refund = await fintech.payments.Refund(
        fintech_pb2.RefundRequest(
            capture_id=captured.capture_id, amount=Money(amount_minor=3_000, currency="JPY"), idempotency_key="r1"
        ),
        metadata=fintech.pay_metadata(None),
        timeout=10,
    )
    assert refund.refunded.amount_minor == 3_000
    rest = await fintech.payments.Refund(
        fintech_pb2.RefundRequest(authorization_id=auth.authorization_id, idempotency_key="r2"),
        metadata=fintech.pay_metadata(None),
        timeout=10,
    )
    assert rest.refunded.amount_minor == 5_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fintech.payments.Refund(
            fintech_pb2.RefundRequest(capture_id=captured.capture_id, idempotency_key="r3"),
            metadata=fintech.pay_metadata(None),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await fintech.card(member))["available_minor"] == 300_000


async def test_void_releases_the_hold_and_capture_after_void_fails(fintech: FintechClient) -> None:
    member = new_member()
    await fintech.apply_card(member)
    auth = await fintech.authorize(member, 50_000)
    void = fintech_pb2.VoidRequest(authorization_id=auth.authorization_id, idempotency_key="v1")
    assert (
        await fintech.payments.Void(void, metadata=fintech.pay_metadata(None), timeout=10)
    ).released.amount_minor == 50_000
    again = fintech_pb2.VoidRequest(authorization_id=auth.authorization_id, idempotency_key="v2")
    assert (
        await fintech.payments.Void(again, metadata=fintech.pay_metadata(None), timeout=10)
    ).released.amount_minor == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fintech.capture(auth.authorization_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await fintech.card(member))["available_minor"] == 300_000


@pytest.mark.parametrize("fintech_overrides", [{"fraud_velocity_count": 1_000}])
async def test_concurrent_authorizations_never_exceed_the_limit(fintech: FintechClient) -> None:
    member = new_member()
    await fintech.apply_card(member, income=1_000_000)  # limit 100,000
    # Thirty at once queue on the card's lock (and the connection pool): each may wait its turn.
    results = await asyncio.gather(*(fintech.authorize(member, 7_000, timeout=60) for _ in range(30)))
    approved = [r for r in results if r.status == APPROVED]
    assert len(approved) == 14, "100,000 holds fourteen 7,000 authorizations, not more"
    assert {r.decline_reason for r in results if r.status == DECLINED} == {fintech_pb2.DECLINE_REASON_LIMIT}
    view = await fintech.card(member)
    assert view["held_minor"] == 98_000 and view["available_minor"] == 2_000


async def test_same_key_does_not_double_charge_and_different_input_is_refused(fintech: FintechClient) -> None:
    member = new_member()
    await fintech.apply_card(member)
    first, second = await asyncio.gather(
        fintech.authorize(member, 20_000, "order-1"), fintech.authorize(member, 20_000, "order-1")
    )
    assert first.authorization_id == second.authorization_id
    c1 = await fintech.capture(first.authorization_id, key="cap-1")
    c2 = await fintech.capture(first.authorization_id, key="cap-1")
    assert c1.capture_id == c2.capture_id
    view = await fintech.card(member)
    assert view["owed_minor"] == 20_000 and len(view["transactions"]) == 1

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fintech.authorize(member, 25_000, "order-1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Another merchant's keys are its own.
    other = await fintech.authorize(member, 1_000, "order-1", service="travel", merchant="travel")
    assert other.status == APPROVED and other.authorization_id != first.authorization_id
    assert (await fintech.card(member))["held_minor"] == 1_000


async def test_declines_carry_a_reason_and_fraud_publishes_an_event(fintech: FintechClient, nats_url: str) -> None:
    member = new_member()
    await fintech.apply_card(member, income=30_000_000)  # limit 2,000,000 (max)
    too_big = await fintech.authorize(member, 1_500_000)
    assert too_big.status == DECLINED and too_big.decline_reason == fintech_pb2.DECLINE_REASON_FRAUD_RULE
    # Velocity is about spending at outside merchants (the ecosystem's own are member-authenticated).
    outside: dict[str, Any] = {"service": "partner-cafe", "merchant": "cafe"}
    retry = await fintech.authorize(member, 2_000, "k", **outside)
    assert retry.status == APPROVED
    for _ in range(4):
        assert (await fintech.authorize(member, 2_000, **outside)).status == APPROVED
    velocity = await fintech.authorize(member, 2_000, **outside)
    assert velocity.status == DECLINED and velocity.decline_reason == fintech_pb2.DECLINE_REASON_FRAUD_RULE
    # A currency the card is not in is refused for that reason, before any fraud rule is asked:
    # here the velocity rule would match too, and on a fresh card so would the amount rule.
    usd = await fintech.authorize(member, 2_000, currency="USD", **outside)
    assert usd.status == DECLINED and usd.decline_reason == fintech_pb2.DECLINE_REASON_CURRENCY_NOT_SUPPORTED
    fresh = new_member()
    await fintech.apply_card(fresh)
    usd_big = await fintech.authorize(fresh, 1_500_000, currency="USD")
    assert usd_big.status == DECLINED
    assert usd_big.decline_reason == fintech_pb2.DECLINE_REASON_CURRENCY_NOT_SUPPORTED
    assert (await fintech.card(fresh))["held_minor"] == 0

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("fintech.authorization.fraud_declined", durable=None, stream="FINTECH")

    async def rules() -> list[str]:
        try:
            msgs = await sub.fetch(10, timeout=0.5)
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
            return []
        seen.extend(events_pb2.FraudDeclined.FromString(m.data).rule for m in msgs)
        return seen if len(seen) >= 2 else []

    seen: list[str] = []
    assert sorted(await wait_until(rules)) == ["amount-over-1000000", "velocity-5-in-10m"]
    await nc.close()


async def test_blocked_card_declines_and_closed_card_is_refused(fintech: FintechClient) -> None:
    member = new_member()
    await fintech.apply_card(member)
    blocked = await fintech.http.post(
        "/api/card/status", json={"status": "blocked"}, headers=fintech.member_headers(member)
    )
    assert blocked.status_code == 200
    auth = await fintech.authorize(member, 1_000)
    assert auth.status == DECLINED and auth.decline_reason == fintech_pb2.DECLINE_REASON_BLOCKED_CARD
    await fintech.http.post("/api/card/status", json={"status": "active"}, headers=fintech.member_headers(member))
    closed = await fintech.http.post(
        "/api/card/status", json={"status": "closed"}, headers=fintech.member_headers(member)
    )
    assert closed.status_code == 200
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fintech.authorize(member, 1_000)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "closed" in (err.value.details() or "")


@pytest.mark.parametrize(
    "amount, currency, member, code",
    [
        (0, "JPY", "known", grpc.StatusCode.INVALID_ARGUMENT),
        (-500, "JPY", "known", grpc.StatusCode.INVALID_ARGUMENT),
        (1_000, "JPY", "unknown", grpc.StatusCode.NOT_FOUND),
        (1_000, "yen", "known", grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["zero", "negative", "unknown-member", "bad-currency"],
)
async def test_bad_authorizations_get_a_clear_error_and_change_nothing(
    fintech: FintechClient, amount: int, currency: str, member: str, code: grpc.StatusCode
) -> None:
    known = new_member()
    await fintech.apply_card(known)
    target = known if member == "known" else new_member()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fintech.authorize(target, amount, "bad-1", currency=currency)
    assert err.value.code() == code and err.value.details()
    # A rejected attempt is remembered: its retry gets the same answer.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await fintech.authorize(target, amount, "bad-1", currency=currency)
    assert again.value.code() == code
    view = await fintech.card(known)
    assert view["available_minor"] == view["credit_limit_minor"] and view["transactions"] == []


async def test_capture_with_another_currency_or_more_than_held_is_refused(fintech: FintechClient) -> None:
    member = new_member()
    await fintech.apply_card(member)
    auth = await fintech.authorize(member, 5_000)
    for amount in (
        Money(amount_minor=5_000, currency="USD"),
        Money(amount_minor=6_000, currency="JPY"),
        Money(amount_minor=0, currency="JPY"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fintech.payments.Capture(
                fintech_pb2.CaptureRequest(
                    authorization_id=auth.authorization_id, amount=amount, idempotency_key=uuid.uuid4().hex
                ),
                metadata=fintech.pay_metadata(None),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    view = await fintech.card(member)
    assert view["held_minor"] == 5_000 and view["owed_minor"] == 0


async def test_callers_need_fintech_pay_and_the_members_consent(fintech: FintechClient) -> None:
    member = new_member()
    await fintech.apply_card(member)
    request = fintech_pb2.AuthorizeRequest(
        member_id=member,
        amount=Money(amount_minor=1_000, currency="JPY"),
        merchant=fintech_pb2.Merchant(merchant_id="shop"),
        idempotency_key="a",
    )
    cases = [
        ([], grpc.StatusCode.UNAUTHENTICATED),
        (fintech.pay_metadata(None), grpc.StatusCode.PERMISSION_DENIED),  # no member consent
        (
            [
                ("authorization", f"Bearer {fintech.issuer.service_token('shop', 'points:credit')}"),
                ("x-kizuna-member-token", fintech.issuer.member_token(member, scope="fintech:pay")),
            ],
            grpc.StatusCode.PERMISSION_DENIED,
        ),  # service lacks fintech:pay
        (fintech.pay_metadata(new_member()), grpc.StatusCode.PERMISSION_DENIED),  # another member's token
        (fintech.pay_metadata(member, member_scope="points:read"), grpc.StatusCode.PERMISSION_DENIED),
    ]
    for metadata, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fintech.payments.Authorize(request, metadata=metadata, timeout=10)
        assert err.value.code() == code
    assert (await fintech.card(member))["held_minor"] == 0
    # And another merchant cannot capture shop's authorization.
    auth = await fintech.authorize(member, 1_000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fintech.capture(auth.authorization_id, service="travel")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
