"""Authenticated NATS, attacked as an attacker would: a raw connection without credentials, and
one with shop's credentials trying to mint points, forge another service's command or ledger
events, request a member's erasure, or read another service's replies; then the legitimate flows
(a purchase earning points, identity's erasure request) still work under authentication.

points runs as a real process with its own NATS user (the kit's `nats_server` has authentication
on, with users and permissions derived from the services' declarations).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import nats
import nats.errors
import nats.js.errors
import pytest
from google.protobuf.message import Message
from kizuna.common.v1 import common_pb2
from kizuna.identity.v1 import events_pb2 as identity_events
from kizuna.kit import natsauth
from kizuna.kit.auth import call_metadata
from kizuna.kit.declaration import discover, earners
from kizuna.kit.errors import PermissionDenied
from kizuna.kit.testing import NatsServer, ServiceProcess, TestIssuer, free_port, reset_streams, wait_until
from kizuna.points.v1 import earning_pb2 as contract
from kizuna.points.v1 import events_pb2 as points_events
from kizuna.points.v1 import points_pb2, points_pb2_grpc
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

STREAMS = ("IDENTITY", "POINTS", "SHOP", "TRAVEL", "FINTECH", "DEADLETTER")


@pytest.fixture(scope="module")
def points(
    nats_server: NatsServer, test_issuer: TestIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A real points process connecting with its own NATS user (never the harness's)."""
    asyncio.run(reset_streams(nats_server.url, *STREAMS))
    work = tmp_path_factory.mktemp("points")
    env = {
        **nats_server.service_env("points"),
        "KIZUNA_ISSUER": test_issuer.issuer,
        "KIZUNA_DATA_DIR": str(work),
        "KIZUNA_EARNERS": json.dumps(earners(discover())),
        # One service's purchases only: the multi-service bonus would not change what is tested.
        "EARN_BONUS_BP_PER_SERVICE": "0",
        "OUTBOX_POLL_SECONDS": "0.2",
        "LOG_FORMAT": "json",
    }
    assert env["NATS_USER"] == "points"
    process = ServiceProcess("points", env, free_port(), free_port(), work / "points.log")
    try:
        yield process.start(timeout=90)
    finally:
        process.stop()


async def connect_as(server: NatsServer, service: str, errors: list[str] | None = None) -> Client:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc).lower())

    return await nats.connect(
        **natsauth.connect_options(service, server.address, service, server.passwords[service]),
        error_cb=on_error,
        allow_reconnect=False,
    )


@pytest.fixture
async def harness(nats_server: NatsServer) -> AsyncIterator[Client]:
    """The test superuser: only to look into streams."""
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


async def publish(nc: Client, subject: str, message: Message, *, timeout: float = 10.0) -> None:
    event_id = f"evt_{uuid.uuid4().hex}"
    headers = {"Nats-Msg-Id": event_id, "ce-id": event_id, "ce-source": "kizuna/shop"}
    await nc.jetstream(timeout=timeout).publish(subject, message.SerializeToString(), headers=headers)


async def stream_subjects(harness: Client, stream: str) -> list[str]:
    try:
        info = await harness.jetstream().stream_info(stream, subjects_filter=">")
    except nats.js.errors.NotFoundError:
        return []
    return sorted((info.state.subjects or {}).keys())


async def messages(harness: Client, subject: str) -> list[Any]:
    sub = await harness.jetstream().pull_subscribe(subject, config=ConsumerConfig(inactive_threshold=5))
    try:
        return list(await sub.fetch(100, timeout=1))
    except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
        return []


async def balance(points: ServiceProcess, issuer: TestIssuer, member_id: str) -> points_pb2.GetBalanceResponse | None:
    async with grpc.aio.insecure_channel(points.grpc_address) as channel:
        try:
            response: points_pb2.GetBalanceResponse = await points_pb2_grpc.PointsServiceStub(channel).GetBalance(
                points_pb2.GetBalanceRequest(member_id=member_id),
                metadata=call_metadata(issuer.member_token(member_id, scope="points:read")),
                timeout=5,
            )
            return response
        except grpc.aio.AioRpcError as exc:
            # Not there yet, or a busy machine: the caller polls again.
            if exc.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAVAILABLE,
            ):
                return None
            raise


def yen(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency="JPY")


async def test_a_connection_without_or_with_wrong_credentials_is_refused(nats_server: NatsServer) -> None:
    attempts: list[dict[str, Any]] = [
        {},
        {"user": "shop", "password": "guessed"},
        {"user": "shop", "password": nats_server.passwords["points"]},
        {"user": natsauth.TEST_SUPERUSER, "password": nats_server.passwords["shop"]},
    ]
    for credentials in attempts:
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(
                nats_server.address, **credentials, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
            )


async def test_shop_cannot_mint_points_or_erase_a_member_and_its_purchases_still_earn(
    nats_server: NatsServer, points: ServiceProcess, test_issuer: TestIssuer, harness: Client
) -> None:
    member = f"mbr_{uuid.uuid4().hex[:16]}"
    identity = await connect_as(nats_server, "identity")
    errors: list[str] = []
    shop = await connect_as(nats_server, "shop", errors)
    try:
        # identity registers the member; points opens the wallet.
        await publish(identity, "identity.member.registered", identity_events.MemberRegistered(member_id=member))
        assert await wait_until(lambda: balance(points, test_issuer, member), timeout=60)

        # The attack of the issue: a credit command in another service's name, with a forged
        # ce-source header; the bare subject; a forged ledger event; an erasure request.
        mint = points_events.CreditRequested(
            idempotency_key=uuid.uuid4().hex,
            member_id=member,
            amount=1_000_000_000,
            kind=points_pb2.CREDIT_KIND_REGULAR,
            reason="free money",
            source_service="fintech",
        )
        forged = {
            "points.credit.requested.fintech": mint,
            "points.credit.requested": mint,
            # shop's declaration does not list the credit command: not even in its own name.
            "points.credit.requested.shop": mint,
            "points.ledger.credited": points_events.Credited(member_id=member, amount=1_000_000_000),
            "identity.member.erasure_requested": identity_events.MemberErasureRequested(member_id=member),
        }
        for subject, message in forged.items():
            with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
                await publish(shop, subject, message, timeout=1)
        await shop.flush()
        for subject in forged:
            assert any(f'permissions violation for publish to "{subject}"' in e for e in errors), (subject, errors)

        # shop's own purchase events are its to publish, and points earns from them (1%).
        bought = contract.Purchase(reference=f"o-{uuid.uuid4().hex[:8]}", member_id=member, paid=yen(10_000))
        await publish(shop, "shop.purchase.paid", contract.PurchasePaid(purchase=bought))
        await publish(shop, "shop.purchase.completed", contract.PurchaseCompleted(purchase=bought))

        async def earned() -> bool:
            reply = await balance(points, test_issuer, member)
            return reply is not None and reply.total == 100

        assert await wait_until(earned, timeout=60)
        # Nothing forged reached a stream, and points credited exactly the purchase.
        assert await stream_subjects(harness, "IDENTITY") == ["identity.member.registered"]
        assert not [s for s in await stream_subjects(harness, "POINTS") if s.startswith("points.credit.requested")]
        credited = [
            points_events.Credited.FromString(m.data) for m in await messages(harness, "points.ledger.credited")
        ]
        assert sum(c.amount for c in credited if c.member_id == member) <= 100
        assert not await messages(harness, "points.member.erased")

        # identity's erasure request is obeyed: points erases and reports it under its own name.
        await publish(
            identity, "identity.member.erasure_requested", identity_events.MemberErasureRequested(member_id=member)
        )

        async def erased() -> list[Any]:
            return await messages(harness, "points.member.erased")

        [done] = await wait_until(erased, timeout=60)
        completed = identity_events.ErasureCompleted.FromString(done.data)
        assert (completed.member_id, completed.service) == (member, "points")
        # identity's own user reads the completion the way its progress consumer does.
        progress = await identity.jetstream(timeout=10).pull_subscribe(
            "points.member.erased", durable="identity-erasure-progress", stream="POINTS"
        )
        [seen] = await progress.fetch(1, timeout=15)
        assert (seen.subject, seen.data) == ("points.member.erased", done.data)
        await seen.ack_sync()
    finally:
        await shop.close()
        await identity.close()
    assert "permissions violation" not in points.logs().lower()


async def test_shop_cannot_read_points_replies_or_streams(
    nats_server: NatsServer, points: ServiceProcess, harness: Client
) -> None:
    errors: list[str] = []
    shop = await connect_as(nats_server, "shop", errors)
    received: list[str] = []

    async def record(msg: Any) -> None:
        received.append(msg.subject)

    try:
        for subject in ("_INBOX_points.>", "_INBOX.>", "points.>", "identity.member.>"):
            await shop.subscribe(subject, cb=record)
        js = shop.jetstream(timeout=1)
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.pull_subscribe("points.>", durable="shop-spy", stream="POINTS")
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.consumer_info("POINTS", "points-commands")
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.delete_stream("POINTS")
        await shop.flush()
        await wait_until(lambda: _at_least(errors, 7), timeout=15)
        # points keeps working meanwhile (its replies and events never reach shop).
        identity = await connect_as(nats_server, "identity")
        try:
            await publish(
                identity,
                "identity.member.registered",
                identity_events.MemberRegistered(member_id=f"mbr_{uuid.uuid4().hex[:16]}"),
            )
        finally:
            await identity.close()
        await asyncio.sleep(0.5)
        assert received == []
        assert "POINTS" in [s.config.name for s in await harness.jetstream().streams_info()]
    finally:
        await shop.close()


async def _at_least(items: list[str], count: int) -> bool:
    return len(items) >= count


async def test_a_service_cannot_fetch_read_delete_or_reconfigure_anothers_durable_consumer(
    nats_server: NatsServer, points: ServiceProcess, test_issuer: TestIssuer, harness: Client
) -> None:
    """fintech and points both read identity's stream, each through its own durable consumers.
    NATS wildcards match whole tokens, never a name prefix, so each user lists its consumers'
    names: fintech cannot take points' member registrations (fetch and ack them), look at its
    consumer, delete it, or re-create it with another filter or a short life, by any of the
    JetStream API's create forms; both keep consuming their own."""
    stream, victim = "IDENTITY", "points-members"
    errors: list[str] = []
    fintech = await connect_as(nats_server, "fintech", errors)
    identity = await connect_as(nats_server, "identity")
    try:
        before = await harness.jetstream().consumer_info(stream, victim)
        assert before.config.filter_subject == "identity.member.registered"
        js = fintech.jetstream(timeout=1)
        api = "$JS.API.CONSUMER"
        reconfigured: dict[str, Any] = {
            "config": {
                "name": victim,
                "filter_subject": "identity.access.revoked",
                "ack_policy": "explicit",
                "deliver_policy": "all",
                "inactive_threshold": 1_000_000_000,
            },
            "stream_name": stream,
        }
        durable = {**reconfigured, "config": {**reconfigured["config"], "durable_name": victim}}
        attempts: dict[str, bytes] = {
            # Take the next message (and so the member's wallet) from points' consumer.
            f"{api}.MSG.NEXT.{stream}.{victim}": json.dumps({"batch": 1, "expires": 500_000_000}).encode(),
            f"{api}.INFO.{stream}.{victim}": b"",
            f"{api}.DELETE.{stream}.{victim}": b"",
            # The same consumer, re-created filtered to nothing points reads and with a short life:
            # by name and filter (the revocation feed's form), by name, as a legacy durable, and as
            # a legacy "ephemeral" whose name is only in the body.
            f"{api}.CREATE.{stream}.{victim}.identity.access.revoked": json.dumps(durable).encode(),
            f"{api}.CREATE.{stream}.{victim}": json.dumps(durable).encode(),
            f"{api}.DURABLE.CREATE.{stream}.{victim}": json.dumps(durable).encode(),
            f"{api}.CREATE.{stream}": json.dumps(reconfigured).encode(),
            # Acknowledge a delivery of points' consumer, so it never comes back.
            f"$JS.ACK.{stream}.{victim}.1.1.1.0.0": b"",
        }
        for subject, body in attempts.items():
            if subject.startswith("$JS.ACK."):
                await fintech.publish(subject, body)
                continue
            with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
                await fintech.request(subject, body, timeout=1)
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.consumer_info(stream, victim)
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.delete_consumer(stream, victim)
        await fintech.flush()
        await wait_until(lambda: _at_least(errors, len(attempts) + 2), timeout=15)
        for subject in attempts:
            assert any(f'permissions violation for publish to "{subject.lower()}"' in e for e in errors), (
                subject,
                errors,
            )
        after = await harness.jetstream().consumer_info(stream, victim)
        assert (after.config.filter_subject, after.config.durable_name, after.config.inactive_threshold) == (
            before.config.filter_subject,
            before.config.durable_name,
            before.config.inactive_threshold,
        )

        # Both keep consuming their own: points opens the new member's wallet, and fintech's user
        # reads the same registration through its own durable consumer.
        member = f"mbr_{uuid.uuid4().hex[:16]}"
        await publish(identity, "identity.member.registered", identity_events.MemberRegistered(member_id=member))
        assert await wait_until(lambda: balance(points, test_issuer, member), timeout=60)
        own = await fintech.jetstream(timeout=10).pull_subscribe(
            "identity.member.registered", durable="fintech-member-accounts", stream=stream
        )
        registered = []
        while member not in registered:
            batch = await own.fetch(10, timeout=15)
            for msg in batch:
                registered.append(identity_events.MemberRegistered.FromString(msg.data).member_id)
                await msg.ack_sync()
    finally:
        await fintech.close()
        await identity.close()
    assert "permissions violation" not in points.logs().lower()


async def test_identity_records_an_erasure_only_for_the_service_that_published_it(tmp_path: Any) -> None:
    """`shop.member.erased` can only come from shop (the broker's rule): identity takes the service
    from the subject, and refuses a body that names another service."""
    from identity.privacy import ErasureProgress, record_completion
    from kizuna.kit.db import Database
    from kizuna.kit.events import Event
    from sqlmodel import SQLModel, select

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'identity.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(
            SQLModel.metadata.create_all, tables=[SQLModel.metadata.tables["identity_erasure_progress"]]
        )

    def completion(subject: str, service: str) -> Event:
        data = identity_events.ErasureCompleted(member_id="mbr_1", service=service).SerializeToString()
        return Event("evt_1", subject, "t", "kizuna/fintech", "mbr_1", "", data, {"ce-source": "kizuna/fintech"})

    try:
        async with db.transaction() as session:
            with pytest.raises(PermissionDenied):
                await record_completion(session, completion("shop.member.erased", "fintech"))
        async with db.transaction() as session:
            await record_completion(session, completion("shop.member.erased", "shop"))
        async with db.sessions() as session:
            rows = (await session.exec(select(ErasureProgress))).all()
        assert [(r.member_id, r.service) for r in rows] == [("mbr_1", "shop")]
    finally:
        await db.dispose()
