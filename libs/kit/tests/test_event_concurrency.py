"""A consumer handling several events at once (`Consumer.concurrency`), on PostgreSQL and real
JetStream: other members' events are not held up behind a slow one, one member's events still run
one at a time in delivery order, a stopping worker finishes what it holds, and an event delivered
again while its first delivery is still being handled takes effect once."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from kizuna.identity.v1 import events_pb2
from kizuna.kit import migrations
from kizuna.kit.db import Database
from kizuna.kit.events import Consumer, ConsumerWorker, Event, ensure_stream
from kizuna.kit.testing import reset_streams, wait_until
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from .demo.service import DemoEffect

DEMO_MIGRATIONS = Path(__file__).parent / "demo" / "migrations"
SUBJECT = "demo.note.created"


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    url = postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    await asyncio.to_thread(migrations.upgrade, url, DEMO_MIGRATIONS)
    database = Database(url)
    yield database
    await database.dispose()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    await reset_streams(nats_url, "DEMO")
    nc = await nats.connect(nats_url)
    context = nc.jetstream()
    await ensure_stream(context, "demo")
    yield context
    await nc.close()


async def send(js: JetStreamContext, event_id: str, member: str, text: str) -> None:
    """An event as another service's relay publishes it: its id and its member in the headers."""
    payload = events_pb2.MemberRegistered(member_id=text).SerializeToString()
    await js.publish(SUBJECT, payload, headers={"ce-id": event_id, "Nats-Msg-Id": event_id, "ce-subject": member})


def text_of(event: Event) -> str:
    return event.parse(events_pb2.MemberRegistered).member_id


async def effects(db: Database) -> list[str]:
    async with db.sessions() as session:
        return list((await session.exec(select(DemoEffect.text).order_by(col(DemoEffect.id)))).all())


async def settled(js: JetStreamContext, durable: str) -> bool:
    info: ConsumerInfo = await js.consumer_info("DEMO", durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_slow_event_does_not_hold_up_other_members_events(db: Database, js: JetStreamContext) -> None:
    quick_handled = asyncio.Event()

    async def handle(session: AsyncSession, event: Event) -> None:
        text = text_of(event)
        if text == "slow":
            # Waits (a while, not for ever) for the event published after it, of another member.
            try:
                await asyncio.wait_for(quick_handled.wait(), 5)
                text = "slow, while the quick one was handled"
            except TimeoutError:
                text = "slow, alone"
        else:
            quick_handled.set()
        session.add(DemoEffect(event_id=event.id, text=text))

    await send(js, "evt-slow", "member-a", "slow")
    await send(js, "evt-quick", "member-b", "quick")
    worker = ConsumerWorker(Consumer("demo-effects", [SUBJECT], handle, concurrency=4), db, js)
    await worker.subscribe()
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: settled(js, "demo-effects"), timeout=15)
    finally:
        worker.stop()
        await task
    # The slow event saw the quick one handled while it waited; which commits first is a race.
    assert sorted(await effects(db)) == ["quick", "slow, while the quick one was handled"]


async def test_one_members_events_run_one_at_a_time_in_delivery_order(db: Database, js: JetStreamContext) -> None:
    handled: dict[str, list[str]] = defaultdict(list)
    in_hand: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []
    most_at_once = 0

    async def handle(session: AsyncSession, event: Event) -> None:
        nonlocal most_at_once
        member = event.member_id or ""
        in_hand[member] += 1
        most_at_once = max(most_at_once, sum(in_hand.values()))
        if in_hand[member] > 1:
            overlaps.append(event.id)
        await asyncio.sleep(0.05)
        handled[member].append(text_of(event))
        session.add(DemoEffect(event_id=event.id, text=text_of(event)))
        in_hand[member] -= 1

    members = ["m1", "m2", "m3"]
    for i in range(8):
        for member in members:
            await send(js, f"evt-{member}-{i}", member, f"{member}:{i}")
    worker = ConsumerWorker(Consumer("demo-effects", [SUBJECT], handle, concurrency=8), db, js)
    await worker.subscribe()
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: settled(js, "demo-effects"), timeout=20)
    finally:
        worker.stop()
        await task
    assert overlaps == []
    assert {m: handled[m] for m in members} == {m: [f"{m}:{i}" for i in range(8)] for m in members}
    assert most_at_once > 1, "the members' events were handled side by side"
    assert len(await effects(db)) == 24


async def test_a_stopping_worker_finishes_the_event_in_hand_and_returns_the_rest(
    db: Database, js: JetStreamContext
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(session: AsyncSession, event: Event) -> None:
        if text_of(event) == "first":
            started.set()
            await release.wait()
        session.add(DemoEffect(event_id=event.id, text=text_of(event)))

    # Both of one member: the second waits behind the first.
    await send(js, "evt-1", "member-a", "first")
    await send(js, "evt-2", "member-a", "second")
    consumer = Consumer("demo-effects", [SUBJECT], slow, concurrency=4)
    stopping = ConsumerWorker(consumer, db, js)
    task = asyncio.create_task(stopping.run())
    await asyncio.wait_for(started.wait(), 10)
    stopping.stop()
    drained = asyncio.create_task(stopping.drain())
    await asyncio.sleep(0.3)
    assert not drained.done(), "drain waits for the event in hand"
    release.set()
    await drained
    await task
    assert await effects(db) == ["first"]

    # The second event went back unhandled; the next worker handles it, and the first not again.
    restarted = ConsumerWorker(consumer, db, js)
    task = asyncio.create_task(restarted.run())
    try:
        await wait_until(lambda: settled(js, "demo-effects"), timeout=15)
    finally:
        restarted.stop()
        await task
    assert await effects(db) == ["first", "second"]


async def test_an_event_delivered_again_while_its_first_delivery_is_in_hand_takes_effect_once(
    db: Database, js: JetStreamContext
) -> None:
    deliveries: list[int] = []

    async def slow_first_time(session: AsyncSession, event: Event) -> None:
        deliveries.append(event.delivery)
        session.add(DemoEffect(event_id=event.id, text=text_of(event)))
        await session.flush()  # the inbox row and the effect are written, not yet committed
        if event.delivery == 1:
            await asyncio.sleep(2.5)  # past ack_wait: JetStream delivers it again meanwhile

    await send(js, "evt-once", "member-a", "once")
    consumer = Consumer("demo-effects", [SUBJECT], slow_first_time, ack_wait_seconds=1.0, concurrency=4)
    workers = [ConsumerWorker(consumer, db, js), ConsumerWorker(consumer, db, js)]
    for worker in workers:
        await worker.subscribe()
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        await wait_until(lambda: delivered_twice_and_settled(js), timeout=15)
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)
    # The second delivery waited on the first's inbox row, found it committed, and stopped there.
    assert deliveries == [1]
    assert await effects(db) == ["once"]


async def delivered_twice_and_settled(js: JetStreamContext) -> bool:
    info: ConsumerInfo = await js.consumer_info("DEMO", "demo-effects")
    assert info.delivered is not None
    return info.delivered.consumer_seq >= 2 and info.num_pending == 0 and info.num_ack_pending == 0


async def test_events_reaching_an_idle_worker_are_handled_as_they_arrive(db: Database, js: JetStreamContext) -> None:
    """Events one by one, 0.2 s apart, to a worker left idle past a whole fetch: a fetch for several
    that found none waiting held an event until the next one arrived (0.2 s here), which two to four
    of the first seven events after every quiet spell paid (bench/earning_bench.py). Each is now
    handled as it arrives; the time to handle is what the test machine gives a handler."""
    handled: dict[str, float] = {}

    async def handle(session: AsyncSession, event: Event) -> None:
        handled[event.id] = asyncio.get_running_loop().time()
        session.add(DemoEffect(event_id=event.id, text=text_of(event)))

    worker = ConsumerWorker(Consumer("demo-effects", [SUBJECT], handle, concurrency=8), db, js)
    await worker.subscribe()
    task = asyncio.create_task(worker.run())
    sent: dict[str, float] = {}
    try:
        await asyncio.sleep(1.5)  # idle past a whole fetch
        for i in range(10):
            sent[f"evt-{i}"] = asyncio.get_running_loop().time()
            await send(js, f"evt-{i}", f"member-{i}", f"event {i}")
            await asyncio.sleep(0.2)
        await wait_until(lambda: settled(js, "demo-effects"), timeout=15)
    finally:
        worker.stop()
        await task
    waits = sorted(round(handled[event] - at, 3) for event, at in sent.items())
    assert waits[-2] < 0.15, f"seconds from publish to handler, sorted: {waits}"
