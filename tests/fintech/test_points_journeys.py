"""Fintech with a real points service process over gRPC and NATS: paying a card bill with points
and bank cash (and failing safely), and card purchases earning points exactly once."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from fintech import payments, statements, sweeper
from fintech.models import PointsPayment
from kizuna.identity.v1 import events_pb2 as identity_events
from kizuna.kit.auth import call_metadata
from kizuna.kit.clock import FrozenClock
from kizuna.kit.errors import FailedPrecondition, Unavailable
from kizuna.kit.points import PointsClient
from kizuna.kit.testing import ServiceProcess, TestIssuer, form_fields, reset_streams, wait_until
from kizuna.points.v1 import points_pb2, points_pb2_grpc
from sqlmodel import select

from services.fintech.tests.fintech_world import FintechClient, new_member, signed_in_browser

FINTECH_SECRET = "fintech-test-secret"


def start_points(
    workdir: Path, nats_url: str, issuer: str, client_secret: str, nats_user: dict[str, str] | None = None
) -> ServiceProcess:
    """A real points process (one per test module: starting one costs seconds), connected to NATS
    as its own user when `nats_user` gives its credentials (`nats_server.service_env("points")`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "NATS_URL": nats_url,
        **(nats_user or {}),
        "KIZUNA_ISSUER": issuer,
        "KIZUNA_DATA_DIR": str(workdir),
        "KIZUNA_CLIENT_SECRET": client_secret,
        "OUTBOX_POLL_SECONDS": "0.2",
        "LOG_FORMAT": "json",
    }
    # Ports 0: points binds its own and reports them.
    return ServiceProcess("points", env, 0, 0, workdir / "points.log").start()


@pytest.fixture(scope="module")
def points_process(
    tmp_path_factory: pytest.TempPathFactory, nats_server: Any, test_issuer: TestIssuer
) -> Iterator[ServiceProcess]:
    asyncio.run(reset_streams(nats_server.url, "FINTECH", "POINTS"))
    test_issuer.register_client("points", "points-test-secret", "points:read")
    test_issuer.register_client("fintech", FINTECH_SECRET, "points:spend points:read")
    process = start_points(
        tmp_path_factory.mktemp("points"),
        nats_server.url,
        test_issuer.issuer,
        "points-test-secret",
        dict(nats_server.service_env("points")),
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def streams_to_reset(points_process: Any) -> list[str]:
    return []  # points' consumers on FINTECH live for the whole module


@pytest.fixture
def fintech_overrides(points_process: Any) -> dict[str, Any]:
    return {
        "points_addr": points_process.grpc_address,
        "kizuna_client_id": "fintech",
        "kizuna_client_secret": FINTECH_SECRET,
    }


class Points:
    def __init__(self, address: str, issuer: TestIssuer) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = points_pb2_grpc.PointsServiceStub(self.channel)
        self.issuer = issuer

    def _meta(self, scope: str) -> Any:
        return call_metadata(self.issuer.service_token("points-test", scope))

    async def register(self, nats_url: str, member_id: str) -> None:
        nc = await nats.connect(nats_url)
        event_id = f"evt_{uuid.uuid4().hex}"
        await nc.jetstream().publish(
            "identity.member.registered",
            identity_events.MemberRegistered(member_id=member_id).SerializeToString(),
            headers={"Nats-Msg-Id": event_id, "ce-id": event_id, "ce-subject": member_id},
        )
        await nc.close()

    async def credit(self, member_id: str, amount: int) -> None:
        attempts = 0

        async def try_credit() -> bool:
            # Points remembers a rejection under its key (a retry cannot turn it into a success),
            # so each attempt while the registration is on its way needs a key of its own.
            nonlocal attempts
            attempts += 1
            try:
                await self.stub.Credit(
                    points_pb2.CreditRequest(
                        member_id=member_id,
                        amount=amount,
                        kind=points_pb2.CREDIT_KIND_REGULAR,
                        reason="welcome",
                        source_service="points-test",
                        idempotency_key=f"welcome-{member_id}-{attempts}",
                    ),
                    metadata=self._meta("points:credit"),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # the registration is still on its way
                    return False
                raise
            return True

        await wait_until(try_credit, timeout=30)

    async def balance(self, member_id: str) -> points_pb2.GetBalanceResponse:
        balance: points_pb2.GetBalanceResponse = await self.stub.GetBalance(
            points_pb2.GetBalanceRequest(member_id=member_id), metadata=self._meta("points:read"), timeout=5
        )
        return balance

    async def entries(self, member_id: str) -> list[points_pb2.Entry]:
        resp = await self.stub.ListEntries(
            points_pb2.ListEntriesRequest(member_id=member_id), metadata=self._meta("points:read"), timeout=5
        )
        return list(resp.entries)


@pytest.fixture
async def points(points_process: Any, test_issuer: TestIssuer) -> Any:
    client = Points(points_process.grpc_address, test_issuer)
    yield client
    await client.channel.close()


async def _statement_for(
    fintech: FintechClient, points: Points, nats_url: str, *, bank: int, points_balance: int, spend: int
) -> tuple[str, str, int]:
    """A member with a bank balance, points, and a closed statement of `spend`; returns
    (member, statement ID, points total after the purchase's earn has settled)."""
    member = new_member()
    await points.register(nats_url, member)
    await points.credit(member, points_balance)
    await fintech.apply_card(member)
    await fintech.open_bank(member, top_up=bank)
    auth = await fintech.authorize(member, spend)
    await fintech.capture(auth.authorization_id)
    settled = await wait_until(lambda: _total_above(points, member, points_balance))
    resp = await fintech.http.post("/api/card/statements/close-now", headers=fintech.member_headers(member))
    assert resp.status_code == 200, resp.text
    assert resp.json()["total_minor"] == spend
    return member, resp.json()["statement_id"], settled


async def _total_above(points: Points, member: str, floor: int) -> int:
    total = (await points.balance(member)).total
    return total if total > floor else 0


async def _pay(fintech: FintechClient, member: str, statement_id: str, bank: int, pts: int, key: str = "") -> Any:
    return await fintech.http.post(
        f"/api/card/statements/{statement_id}/pay",
        json={"bank_minor": bank, "points": pts, "idempotency_key": key or uuid.uuid4().hex},
        headers=fintech.member_headers(member),
    )


async def test_bill_paid_with_points_and_bank(fintech: FintechClient, points: Points, nats_url: str) -> None:
    member, statement_id, points_total = await _statement_for(
        fintech, points, nats_url, bank=6_000, points_balance=3_000, spend=8_000
    )
    first = await _pay(fintech, member, statement_id, 5_000, 3_000, key="bill-1")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "completed"
    retry = await _pay(fintech, member, statement_id, 5_000, 3_000, key="bill-1")
    assert retry.json()["payment_id"] == first.json()["payment_id"]

    balance = await points.balance(member)
    assert balance.total == points_total - 3_000 and balance.pending == 0
    assert await fintech.bank_balance(member) == 1_000
    statement = (await fintech.http.get("/api/card/statements", headers=fintech.member_headers(member))).json()[0]
    assert statement["status"] == "paid" and statement["due_minor"] == 0
    card = await fintech.card(member)
    assert card["owed_minor"] == 0 and card["available_minor"] == card["credit_limit_minor"]

    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().pull_subscribe("fintech.card_bill.paid", durable=None, stream="FINTECH")
    from kizuna.fintech.v1 import events_pb2

    async def paid_event() -> Any:  # the stream also holds earlier tests' events (one points per module)
        try:
            msgs = await sub.fetch(20, timeout=0.5)
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
            return None
        found = [
            e for e in (events_pb2.CardBillPaid.FromString(m.data) for m in msgs) if e.statement_id == statement_id
        ]
        return found[0] if found else None

    paid = await wait_until(paid_event)
    assert (paid.statement_id, paid.amount.amount_minor, paid.points_used) == (statement_id, 8_000, 3_000)
    await nc.close()


async def test_bank_part_failing_voids_the_points_and_charges_nothing(
    fintech: FintechClient, points: Points, nats_url: str
) -> None:
    member, statement_id, points_total = await _statement_for(
        fintech, points, nats_url, bank=1_000, points_balance=3_000, spend=8_000
    )
    resp = await _pay(fintech, member, statement_id, 5_000, 3_000)
    assert resp.status_code == 409 and "insufficient funds" in resp.json()["message"]

    balance = await points.balance(member)
    assert balance.total == points_total and balance.pending == 0
    assert not [e for e in await points.entries(member) if e.kind == points_pb2.ENTRY_KIND_SPEND]
    async with fintech.ctx.db.sessions() as session:
        payment = (await session.exec(select(PointsPayment).where(PointsPayment.member_id == member))).one()
    assert payment.status == "failed" and payment.reservation_id, "the points were reserved, then released"
    assert await fintech.bank_balance(member) == 1_000
    statement = (await fintech.http.get("/api/card/statements", headers=fintech.member_headers(member))).json()[0]
    assert statement["status"] == "open" and statement["due_minor"] == 8_000
    assert (await fintech.card(member))["owed_minor"] == 8_000


async def test_paying_more_points_than_the_member_has_changes_nothing(
    fintech: FintechClient, points: Points, nats_url: str
) -> None:
    member, statement_id, points_total = await _statement_for(
        fintech, points, nats_url, bank=9_000, points_balance=500, spend=8_000
    )
    resp = await _pay(fintech, member, statement_id, 1_000, 7_000)
    assert resp.status_code == 409 and resp.json()["message"].startswith("points: insufficient points")
    assert (await points.balance(member)).total == points_total
    assert await fintech.bank_balance(member) == 9_000
    for bank, pts in ((-1, 100), (0, 0), (9_000, 0)):  # negative, zero, more than due
        bad = await _pay(fintech, member, statement_id, bank, pts)
        assert bad.status_code == 400, bad.text
    assert await fintech.bank_balance(member) == 9_000


async def test_card_purchase_earns_points_exactly_once(fintech: FintechClient, points: Points, nats_url: str) -> None:
    member = new_member()
    await points.register(nats_url, member)
    await points.credit(member, 1)
    await fintech.apply_card(member)
    auth = await fintech.authorize(member, 12_000)
    capture = await fintech.capture(auth.authorization_id, key="cap")
    again = await fintech.capture(auth.authorization_id, key="cap")  # a retry: no second purchase
    assert again.capture_id == capture.capture_id

    async def earned() -> list[points_pb2.Entry]:
        return [
            e
            for e in await points.entries(member)
            if e.kind == points_pb2.ENTRY_KIND_CREDIT and e.source_ref == capture.capture_id
        ]

    first = await wait_until(earned)
    assert len(first) == 1 and first[0].amount > 0 and first[0].source_service == "fintech"

    # Deliver the same event again (as a relay crash between publish and mark-sent would):
    # a new NATS message ID gets it past JetStream's de-duplication, the event ID stays.
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("fintech.purchase.completed", durable=None, stream="FINTECH")
    original = (await sub.fetch(1, timeout=5))[0]
    headers = {**(original.headers or {}), "Nats-Msg-Id": f"redelivery-{uuid.uuid4().hex}"}
    ack = await js.publish(original.subject, original.data, headers=headers)

    async def processed() -> bool:
        info = await js.consumer_info("FINTECH", "points-fintech-earn")
        return bool(info.ack_floor is not None and info.ack_floor.stream_seq >= ack.seq)

    await wait_until(processed)
    await nc.close()
    assert len(await earned()) == 1
    assert (await points.balance(member)).total == 1 + first[0].amount


async def test_buy_a_fund_with_points_and_bank(fintech: FintechClient, points: Points, nats_url: str) -> None:
    member = new_member()
    await points.register(nats_url, member)
    await points.credit(member, 2_000)
    await fintech.open_bank(member, top_up=8_000)
    resp = await fintech.http.post(
        "/api/funds/kzn-global-bond/buy",
        json={"bank_minor": 8_000, "points": 2_000, "idempotency_key": "b-1"},
        headers=fintech.member_headers(member),
    )
    assert resp.status_code == 200 and resp.json()["status"] == "completed", resp.text
    assert (await points.balance(member)).total == 0
    assert await fintech.bank_balance(member) == 0
    [holding] = (await fintech.http.get("/api/holdings", headers=fintech.member_headers(member))).json()["holdings"]
    assert holding["cost_minor"] == 10_000


class FaultyPoints(PointsClient):
    """The real points client, with one step going wrong the way networks do: the capture
    happens at points but its answer is lost, or the void never reaches points."""

    def __init__(self, runtime: Any, fail: str) -> None:
        super().__init__(runtime.settings.points_addr, runtime.service_tokens, service="fintech")
        self.fail = fail

    async def capture(self, reservation_id: str, key: str, amount: int = 0) -> Any:
        captured = await super().capture(reservation_id, key, amount)
        if self.fail == "capture-answer-lost":
            raise Unavailable("points: deadline exceeded")
        return captured

    async def void(self, reservation_id: str, key: str) -> int:
        if self.fail == "void-unreachable":
            raise Unavailable("points: connection refused")
        return await super().void(reservation_id, key)


async def _pay_with(
    fintech: FintechClient, points_client: PointsClient, member: str, statement_id: str, key: str
) -> Any:
    return await payments.pay(
        fintech.ctx,
        points_client,
        member_id=member,
        member_token=fintech.issuer.member_token(member, scope="points:spend"),
        purpose="card_bill",
        target_id=statement_id,
        bank_minor=5_000,
        points=3_000,
        key=key,
        check=statements.check_bill,
        apply=statements.apply_bill,
        reason="Kizuna Card bill",
    )


async def _payment_of(fintech: FintechClient, member: str) -> PointsPayment:
    async with fintech.ctx.db.sessions() as session:
        return (await session.exec(select(PointsPayment).where(PointsPayment.member_id == member))).one()


async def test_sweeper_finishes_a_payment_whose_capture_answer_was_lost(
    fintech: FintechClient, points: Points, nats_url: str
) -> None:
    clock = FrozenClock()
    fintech.runtime.clock = clock
    member, statement_id, points_total = await _statement_for(
        fintech, points, nats_url, bank=6_000, points_balance=3_000, spend=8_000
    )
    faulty = FaultyPoints(fintech.runtime, "capture-answer-lost")
    with pytest.raises(Unavailable, match="in progress"):
        await _pay_with(fintech, faulty, member, statement_id, "bill-lost")
    await faulty.close()
    assert (await _payment_of(fintech, member)).status == "bank_taken"  # not compensated on a maybe

    assert (await sweeper.sweep(fintech.runtime))["completed"] == 0  # not stuck yet: a request may own it
    clock.advance(timedelta(seconds=fintech.ctx.settings.payment_stuck_seconds + 1))
    assert (await sweeper.sweep(fintech.runtime))["completed"] == 1
    assert (await _payment_of(fintech, member)).status == "completed"
    balance = await points.balance(member)
    assert balance.total == points_total - 3_000 and balance.pending == 0, "captured exactly once"
    assert len([e for e in await points.entries(member) if e.kind == points_pb2.ENTRY_KIND_SPEND]) == 1
    assert await fintech.bank_balance(member) == 1_000
    statement = (await fintech.http.get("/api/card/statements", headers=fintech.member_headers(member))).json()[0]
    assert statement["status"] == "paid"
    assert (await _pay(fintech, member, statement_id, 5_000, 3_000, key="bill-lost")).json()["status"] == "completed"
    assert (await sweeper.sweep(fintech.runtime))["completed"] == 0


async def test_sweeper_releases_the_points_when_the_void_did_not_reach_points(
    fintech: FintechClient, points: Points, nats_url: str
) -> None:
    clock = FrozenClock()
    fintech.runtime.clock = clock
    member, statement_id, points_total = await _statement_for(
        fintech, points, nats_url, bank=1_000, points_balance=3_000, spend=8_000
    )
    faulty = FaultyPoints(fintech.runtime, "void-unreachable")
    with pytest.raises(FailedPrecondition, match="insufficient funds"):
        await _pay_with(fintech, faulty, member, statement_id, "bill-void")
    await faulty.close()
    assert (await _payment_of(fintech, member)).status == "voiding"
    assert (await points.balance(member)).pending == 3_000  # still held at points
    retry = await _pay(fintech, member, statement_id, 5_000, 3_000, key="bill-void")
    assert retry.status_code == 409 and "insufficient funds" in retry.json()["message"]

    clock.advance(timedelta(seconds=fintech.ctx.settings.payment_stuck_seconds + 1))
    assert (await sweeper.sweep(fintech.runtime))["failed"] == 1
    assert (await _payment_of(fintech, member)).status == "failed"
    balance = await points.balance(member)
    assert balance.total == points_total and balance.pending == 0
    assert await fintech.bank_balance(member) == 1_000
    assert (await fintech.card(member))["owed_minor"] == 8_000


async def test_a_signed_in_member_uses_every_form_and_forged_posts_change_nothing(
    fintech: FintechClient, points: Points, nats_url: str
) -> None:
    member, friend = new_member(), new_member()
    await points.register(nats_url, member)
    await points.credit(member, 5_000)
    await fintech.open_bank(friend)
    browser = await signed_in_browser(fintech, member, "Hana")
    try:
        bank_page = await browser.get("/bank")
        assert bank_page.status_code == 200 and "Hana" in bank_page.text
        top_up = form_fields(bank_page.text, "/bank/top-up")
        assert top_up["csrf_token"]

        # A cross-site form: no token, or someone else's, is refused and moves no money.
        for forged in ({}, {"csrf_token": "0" * 64}):
            refused = await browser.post("/bank/top-up", data={"key": top_up["key"], "amount_minor": "20000", **forged})
            assert refused.status_code == 403, refused.text
        assert await fintech.bank_balance(member) == 0

        done = await browser.post("/bank/top-up", data={**top_up, "amount_minor": "20000"})
        assert done.status_code == 303 and done.headers["location"] == "/bank"  # no message in the URL
        shown = await browser.get("/bank")
        assert 'data-flash="success"' in shown.text and "¥20,000 added to your account." in shown.text
        assert "added to your account" not in (await browser.get("/bank")).text  # shown once
        again = await browser.post("/bank/top-up", data={**top_up, "amount_minor": "20000"})  # double submit
        assert again.status_code == 303 and await fintech.bank_balance(member) == 20_000

        transfer = form_fields((await browser.get("/bank")).text, "/bank/transfer")
        sent = await browser.post("/bank/transfer", data={**transfer, "to_member_id": friend, "amount_minor": "3000"})
        assert sent.status_code == 303 and await fintech.bank_balance(friend) == 3_000

        apply = form_fields((await browser.get("/card")).text, "/card/apply")
        issued = await browser.post("/card/apply", data={**apply, "annual_income_minor": "4000000"})
        assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store"
        number = re.search(r"data-card-number>(\d{16})<", issued.text)
        assert number, issued.text
        card_page = (await browser.get("/card")).text
        assert f"•••• {number.group(1)[-4:]}" in card_page and number.group(1) not in card_page

        auth = await fintech.authorize(member, 8_000)
        await fintech.capture(auth.authorization_id)
        settled = await wait_until(lambda: _total_above(points, member, 5_000))
        closed = await fintech.http.post("/api/card/statements/close-now", headers=fintech.member_headers(member))
        statement_id = closed.json()["statement_id"]
        pay = form_fields((await browser.get("/card")).text, f"/card/statements/{statement_id}/pay")
        paid = await browser.post(
            f"/card/statements/{statement_id}/pay", data={**pay, "bank_minor": "5000", "points": "3000"}
        )
        assert paid.status_code == 303 and paid.headers["location"] == "/card", paid.headers["location"]
        card_page = (await browser.get("/card")).text
        assert "Thank you: ¥5,000 and 3,000 pt paid towards your card bill." in card_page
        assert "Payment: ¥5,000 from your bank and 3,000 pt" in card_page and "(bank 5000" not in card_page
        assert (await points.balance(member)).total == settled - 3_000
        assert await fintech.bank_balance(member) == 12_000

        invest = (await browser.get("/invest")).text
        found = re.search(r'action="/invest/([^/"]+)/buy"', invest)
        assert found, invest
        fund_id = found.group(1)
        buy = form_fields(invest, f"/invest/{fund_id}/buy")
        bought = await browser.post(f"/invest/{fund_id}/buy", data={**buy, "bank_minor": "0", "points": "1000"})
        assert bought.status_code == 303 and bought.headers["location"] == "/invest", bought.headers["location"]
        assert "Bought for 1,000 pt." in (await browser.get("/invest")).text
        # A refusal is an error in plain words, not a success and not the service's internal text.
        buy = form_fields((await browser.get("/invest")).text, f"/invest/{fund_id}/buy")
        refused = await browser.post(
            f"/invest/{fund_id}/buy", data={**buy, "bank_minor": "0", "points": "999999"}, follow_redirects=True
        )
        assert 'data-flash="error"' in refused.text and 'data-flash="success"' not in refused.text
        assert "insufficient points" not in refused.text and "You asked to use 999,999 pt" in refused.text
        assert (await points.balance(member)).total == settled - 4_000
        holdings = (await fintech.http.get("/api/holdings", headers=fintech.member_headers(member))).json()
        assert [h["fund_id"] for h in holdings["holdings"]] == [fund_id]
    finally:
        await browser.aclose()
