"""A member's life at fintech beyond payments: the bank account opened when identity registers
them, holds that lapse, and the privacy protocol (export, then erasure that keeps the books)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import nats
import pytest
from fintech import sweeper
from fintech.models import Card, IdempotencyRecord, LedgerAccount, LedgerPosting
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.fintech.v1 import fintech_pb2
from kizuna.identity.v1 import events_pb2 as identity_events
from kizuna.kit.clock import FrozenClock
from kizuna.kit.testing import wait_until
from sqlmodel import col, func, select

from .fintech_world import FintechClient, new_member


@pytest.fixture
def streams_to_reset() -> list[str]:
    return ["FINTECH", "IDENTITY"]


async def _announce(nats_url: str, subject: str, message: Message, member_id: str, event_id: str | None = None) -> None:
    nc = await nats.connect(nats_url)
    event_id = event_id or f"evt_{uuid.uuid4().hex}"
    await nc.jetstream().publish(
        subject,
        message.SerializeToString(),
        headers={"Nats-Msg-Id": event_id, "ce-id": event_id, "ce-subject": member_id},
    )
    await nc.close()


async def _accounts_of(fintech: FintechClient, member_id: str) -> int:
    async with fintech.ctx.db.sessions() as session:
        return int(
            (await session.exec(select(func.count()).where(col(LedgerAccount.account_id) == f"bank:{member_id}"))).one()
        )


async def test_a_registered_member_gets_one_bank_account(fintech: FintechClient, nats_url: str) -> None:
    member = new_member()
    assert await _accounts_of(fintech, member) == 0
    registered = identity_events.MemberRegistered(member_id=member, display_name="Aoi")
    await _announce(nats_url, "identity.member.registered", registered, member, "evt-reg-1")
    await wait_until(lambda: _accounts_of(fintech, member))
    assert await fintech.bank_balance(member) == 0

    # A redelivery, a second announcement and the member opening it themselves change nothing.
    await _announce(nats_url, "identity.member.registered", registered, member)
    resp = await fintech.http.post("/api/bank/account", headers=fintech.member_headers(member))
    assert resp.status_code == 201, resp.text
    other = new_member()
    await _announce(nats_url, "identity.member.registered", identity_events.MemberRegistered(member_id=other), other)
    await wait_until(lambda: _accounts_of(fintech, other))  # processed in order: the repeat came first
    assert await _accounts_of(fintech, member) == 1 and await fintech.bank_balance(member) == 0


async def test_lapsed_holds_are_marked_expired_and_cannot_be_captured(fintech: FintechClient) -> None:
    clock = FrozenClock()
    fintech.runtime.clock = clock
    member = new_member()
    await fintech.apply_card(member)
    auth = await fintech.authorize(member, 5_000)
    assert auth.status == fintech_pb2.AUTHORIZATION_STATUS_APPROVED
    assert (await fintech.card(member))["held_minor"] == 5_000

    assert (await sweeper.sweep(fintech.runtime))["holds_expired"] == 0
    clock.advance(timedelta(seconds=fintech.ctx.settings.authorization_ttl_seconds + 1))
    assert (await sweeper.sweep(fintech.runtime))["holds_expired"] == 1
    assert (await sweeper.sweep(fintech.runtime))["holds_expired"] == 0
    card = await fintech.card(member)
    assert card["held_minor"] == 0 and card["available_minor"] == card["credit_limit_minor"]
    with pytest.raises(Exception, match="expired"):
        await fintech.capture(auth.authorization_id)


async def test_export_then_erasure_keeps_the_books_and_forgets_the_member(
    fintech: FintechClient, nats_url: str
) -> None:
    member, friend = new_member(), new_member()
    card = await fintech.apply_card(member)
    await fintech.open_bank(member, top_up=20_000)
    await fintech.open_bank(friend)
    sent = await fintech.http.post(
        "/api/bank/transfers",
        json={"to_member_id": friend, "amount_minor": 3_000, "currency": "JPY", "idempotency_key": "t-1"},
        headers=fintech.member_headers(member),
    )
    assert sent.status_code == 200, sent.text
    auth = await fintech.authorize(member, 2_500)
    await fintech.capture(auth.authorization_id)

    export_url = f"/privacy/members/{member}/export"
    identity = {"authorization": f"Bearer {fintech.issuer.service_token('identity', 'privacy:export')}"}
    assert (await fintech.http.get(export_url, headers=fintech.member_headers(member))).status_code == 403
    resp = await fintech.http.get(export_url, headers=identity)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    async with fintech.ctx.db.sessions() as session:
        pan_token = (await session.exec(select(Card.pan_token).where(Card.member_id == member))).one()
    assert pan_token not in resp.text and card["card_number"] not in resp.text
    (exported_card,) = data["cards"]
    assert exported_card["last4"] == card["card_number"][-4:] and exported_card["owed_minor"] == 2_500
    assert [t["amount_minor"] for t in exported_card["transactions"]] == [2_500]
    assert data["bank"]["balance_minor"] == 17_000
    assert sorted(h["amount_minor"] for h in data["bank"]["history"]) == [-3_000, 20_000]
    assert data["holdings"]["holdings"] == [] and data["statements"] == []

    async def postings() -> list[tuple[str, int]]:
        async with fintech.ctx.db.sessions() as session:
            rows = (await session.exec(select(LedgerPosting.account_id, LedgerPosting.amount_minor))).all()
        return sorted((a, m) for a, m in rows)

    books = await postings()
    requested_at = Timestamp()
    requested_at.GetCurrentTime()
    erasure = identity_events.MemberErasureRequested(member_id=member, requested_at=requested_at)
    await _announce(nats_url, "identity.member.erasure_requested", erasure, member)

    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().pull_subscribe("fintech.member.erased", durable=None, stream="FINTECH")

    async def erased() -> list[str]:
        try:
            msgs = await sub.fetch(10, timeout=0.5)
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
            return []
        return [identity_events.ErasureCompleted.FromString(m.data).member_id for m in msgs]

    assert member in await wait_until(erased)
    await nc.close()

    # The books still balance and still name the bare member ID; the card can no longer be found.
    assert await postings() == books
    assert await fintech.bank_balance(friend) == 3_000
    async with fintech.ctx.db.sessions() as session:
        erased_card = (await session.exec(select(Card).where(Card.member_id == member))).one()
        records = (
            await session.exec(select(IdempotencyRecord).where(col(IdempotencyRecord.scope).startswith(member)))
        ).all()
        bank_row = await session.get(LedgerAccount, f"bank:{member}")
    assert erased_card.status == "closed" and erased_card.last4 == "" and erased_card.pan_token != pan_token
    assert records == [] and bank_row is not None and bank_row.balance_minor == 17_000
    merchant = await fintech.http.post(
        "/merchant/v1/authorizations",
        json={"card_number": card["card_number"], "amount_minor": 100, "description": "x", "idempotency_key": "m-1"},
        headers=fintech.merchant_headers("partner-cafe"),
    )
    assert merchant.status_code in (403, 404), merchant.text
    again = (await fintech.http.get(export_url, headers=identity)).json()["data"]
    assert again["cards"][0]["last4"] == "" and again["bank"]["balance_minor"] == 17_000
