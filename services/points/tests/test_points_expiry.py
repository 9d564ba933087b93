"""The expiry pass with several replicas: two passes at once against one database expire each lot
once and publish one `points.ledger.expired` per expiry (read from the real POINTS stream)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import nats
from kizuna.kit.db import Database
from kizuna.kit.events import OutboxMessage
from kizuna.kit.testing import wait_until
from kizuna.points.v1 import events_pb2 as points_events
from kizuna.points.v1 import points_pb2 as pb
from nats.js.api import ConsumerConfig, DeliverPolicy
from points.expiry import run_expiry
from sqlalchemy import func
from sqlmodel import col, select

from .pointskit import Points

MEMBERS = [f"member-{i:02d}" for i in range(30)]


async def test_two_expiry_passes_at_once_expire_each_lot_once(points: Points, nats_url: str, database_url: str) -> None:
    await points.register(*MEMBERS)
    soon = points.clock.now() + timedelta(days=1)
    for member in MEMBERS:
        await points.credit(member, 10, kind=pb.CREDIT_KIND_LIMITED_TIME, expires_at=soon)
        await points.credit(member, 5)  # regular points, not due
    points.clock.advance(timedelta(days=2))
    now = points.clock.now()
    # Two replicas: each its own engine and connection pool, as two processes would have.
    replicas = [Database(database_url), Database(database_url)]
    try:
        settled = await asyncio.gather(*(run_expiry(db, now) for db in replicas))
    finally:
        for db in replicas:
            await db.dispose()
    assert sum(settled) >= len(MEMBERS)  # between them, the two passes settled every member

    for member in MEMBERS:
        entries = (await points.entries(member)).entries
        assert [e.amount for e in entries if e.kind == pb.ENTRY_KIND_EXPIRY] == [-10], member
        assert (await points.balance(member)).total == 5

    async def outbox_sent() -> bool:
        async with points.runtime.db.sessions() as session:
            unsent = select(func.count()).select_from(OutboxMessage).where(col(OutboxMessage.sent_at).is_(None))
            return (await session.exec(unsent)).one() == 0

    await wait_until(outbox_sent, timeout=30)
    expired = [
        points_events.Expired.FromString(data) for data in await _stream_messages(nats_url, "points.ledger.expired")
    ]
    assert sorted(e.member_id for e in expired) == MEMBERS  # one event per expiry, none twice
    assert {e.amount for e in expired} == {10}
    assert len({e.entry_id for e in expired}) == len(MEMBERS)


async def _stream_messages(nats_url: str, subject: str) -> list[bytes]:
    """Every message on `subject` in the POINTS stream, from the first."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=5)
        sub = await js.pull_subscribe(subject, stream="POINTS", config=config)
        found: list[bytes] = []
        while True:
            try:
                batch = await sub.fetch(100, timeout=1)
            except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
                return found
            for msg in batch:
                await msg.ack()
                found.append(msg.data)
    finally:
        await nc.close()
