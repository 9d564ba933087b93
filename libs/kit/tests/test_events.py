"""The event path through real NATS JetStream and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import nats
from kizuna.kit import events, migrations
from kizuna.kit.db import Database
from kizuna.kit.events import Consumer, ConsumerWorker, OutboxMessage, OutboxRelay, Staged, ensure_stream
from kizuna.kit.service import Runtime
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.telemetry import extract_context
from kizuna.kit.testing import reset_streams, wait_until
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, ConsumerInfo
from nats.js.client import JetStreamContext
from opentelemetry import context as otel_context
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from .demo.service import DemoEffect, DemoNote, record_effect, write_note

DEMO_MIGRATIONS = Path(__file__).parent / "demo" / "migrations"


async def stream_messages(nats_url: str, subject: str) -> list[Msg]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, config=ConsumerConfig(inactive_threshold=5))
        try:
            return list(await sub.fetch(100, timeout=1))
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
            return []
    finally:
        await nc.close()


def headers_of(msg: Msg) -> dict[str, str]:
    assert msg.headers is not None, "every event the kit publishes carries headers"
    return msg.headers


async def count(db: Database, model: type) -> int:
    async with db.sessions() as session:
        return len((await session.exec(select(model))).all())


async def test_business_row_and_event_commit_together_and_rollback_publishes_nothing(
    demo: Runtime[ServiceSettings], nats_url: str
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.http_port}") as client:
        ok = await client.post("/notes", json={"text": "kept"})
        assert ok.status_code == 200
        failed = await client.post("/notes", json={"text": "rolled-back", "fail_after_write": True})
        assert failed.status_code == 500

    await wait_until(lambda: count(demo.db, DemoEffect))
    msgs = await stream_messages(nats_url, "demo.note.created")
    assert [headers_of(m)["ce-subject"] for m in msgs] == ["kept"]
    headers = headers_of(msgs[0])
    assert headers["Nats-Msg-Id"] == headers["ce-id"] == ok.json()["event_id"]
    assert headers["ce-type"] == "kizuna.demo.note.created"
    assert headers["ce-source"] == "kizuna/demo"
    assert headers["ce-specversion"] == "1.0"
    assert headers["traceparent"].startswith("00-")
    async with demo.db.sessions() as session:
        notes = (await session.exec(select(DemoNote.text))).all()
        outbox = (await session.exec(select(OutboxMessage))).all()
    assert notes == ["kept"]
    assert len(outbox) == 1 and outbox[0].sent_at is not None


class RelayKilledBeforeMark(OutboxRelay):
    """Publishes, then dies before it can record that it did (as a SIGKILL at that point would)."""

    async def _mark_sent(self, session: AsyncSession, rows: Sequence[OutboxMessage]) -> None:
        raise ConnectionAbortedError("relay process killed between publish and mark-sent")

    async def _mark_all_sent(self, ids: list[int]) -> None:  # SQLite's way
        raise ConnectionAbortedError("relay process killed between publish and mark-sent")


async def test_relay_killed_between_publish_and_mark_sent_takes_effect_once(nats_url: str, database_url: str) -> None:
    await reset_streams(nats_url, "DEMO")
    await asyncio.to_thread(migrations.upgrade, database_url, DEMO_MIGRATIONS)
    db = Database(database_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, "demo")
    try:
        async with db.transaction() as session:
            event_id = await write_note(session, "once")

        crashed = RelayKilledBeforeMark(db, js, source="kizuna/demo")
        try:
            await crashed.flush()
        except ConnectionAbortedError:
            pass
        assert (await OutboxRelay(db, js, source="kizuna/demo").pending()) == 1, "the row stays pending"

        # The restarted relay publishes again; JetStream drops the duplicate by Nats-Msg-Id.
        assert await OutboxRelay(db, js, source="kizuna/demo").flush() == 1
        info = await js.stream_info("DEMO")
        assert info.state.messages == 1

        # Past the duplicate window the re-publish would land; the consumer's inbox absorbs it.
        msgs = await stream_messages(nats_url, "demo.note.created")
        headers = dict(headers_of(msgs[0]))
        headers["Nats-Msg-Id"] = event_id + "-republished"
        await js.publish("demo.note.created", msgs[0].data, headers=headers)
        assert (await js.stream_info("DEMO")).state.messages == 2

        worker = ConsumerWorker(Consumer("demo-effects", ["demo.note.created"], record_effect), db, js)
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: _acked_all(js, "demo-effects"))
        worker.stop()
        await task
        async with db.sessions() as session:
            effects = (await session.exec(select(DemoEffect))).all()
        assert [(e.event_id, e.text) for e in effects] == [(event_id, "once")]
    finally:
        await nc.close()
        await db.dispose()


async def _acked_all(js: JetStreamContext, durable: str) -> bool:
    try:
        info: ConsumerInfo = await js.consumer_info("DEMO", durable)
    except nats.js.errors.NotFoundError:
        return False
    assert info.delivered is not None
    return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq > 0


async def test_event_redelivered_after_consumer_crash_takes_effect_once(nats_url: str, database_url: str) -> None:
    await reset_streams(nats_url, "DEMO")
    await asyncio.to_thread(migrations.upgrade, database_url, DEMO_MIGRATIONS)
    db = Database(database_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await ensure_stream(js, "demo")
        async with db.transaction() as session:
            await write_note(session, "redelivered")
        await OutboxRelay(db, js, source="kizuna/demo").flush()

        consumer = Consumer("demo-effects", ["demo.note.created"], record_effect, ack_wait_seconds=1.0)
        crashed = ConsumerWorker(consumer, db, js)
        await crashed.subscribe()
        [msg] = await crashed._sub.fetch(1, timeout=5)
        outcome = await crashed.process(msg)  # effect committed; the process dies before the ack
        assert outcome.status == "done"

        restarted = ConsumerWorker(consumer, db, js)
        task = asyncio.create_task(restarted.run())
        info = await wait_until(lambda: _redelivered_and_acked(js))
        restarted.stop()
        await task
        # One message in the stream, delivered twice: the crash, then the redelivery.
        assert (info.delivered.stream_seq, info.delivered.consumer_seq) == (1, 2)
        assert await count(db, DemoEffect) == 1
    finally:
        await nc.close()
        await db.dispose()


async def _redelivered_and_acked(js: JetStreamContext) -> ConsumerInfo | None:
    info: ConsumerInfo = await js.consumer_info("DEMO", "demo-effects")
    assert info.delivered is not None
    return info if info.num_ack_pending == 0 and info.delivered.consumer_seq >= 2 else None


async def test_poison_message_goes_to_dead_letter_while_later_events_flow(
    demo: Runtime[ServiceSettings], nats_url: str
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.http_port}") as client:
        for text in ("poison-pill", "after-1", "after-2"):
            assert (await client.post("/notes", json={"text": text})).status_code == 200

    async def effects() -> list[str]:
        async with demo.db.sessions() as session:
            return sorted((await session.exec(select(DemoEffect.text))).all())

    # Later events are not stuck behind the failing one.
    assert await wait_until(lambda: _equals(effects, ["after-1", "after-2"]))

    async def dead_letters() -> list[Msg]:
        try:
            return await stream_messages(nats_url, "deadletter.demo.demo-effects")
        except nats.js.errors.NotFoundError:
            return []

    [dead] = await wait_until(dead_letters, timeout=15)
    assert dead.headers["kizuna-original-subject"] == "demo.note.created"
    assert dead.headers["kizuna-consumer"] == "demo-effects"
    assert dead.headers["kizuna-deliveries"] == "3"
    assert "cannot handle poison-pill" in dead.headers["kizuna-error"]
    assert dead.headers["ce-subject"] == "poison-pill"
    assert await effects() == ["after-1", "after-2"]


async def _equals(fn: Callable[[], Awaitable[list[str]]], expected: list[str]) -> bool:
    return (await fn()) == expected


async def test_an_event_staged_in_a_savepoint_is_published_when_the_transaction_commits(
    nats_url: str, database_url: str
) -> None:
    """The relay is woken by the outermost commit, not by releasing a savepoint inside it."""
    await reset_streams(nats_url, "DEMO")
    await asyncio.to_thread(migrations.upgrade, database_url, DEMO_MIGRATIONS)
    db = Database(database_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, "demo")
    # The safety-net poll is far away: only a wake-up on commit publishes in time.
    relay = OutboxRelay(db, js, source="kizuna/demo", poll_seconds=60)
    running = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)  # the relay's first (empty) flush is done; it now waits
        async with db.transaction() as session:
            async with session.begin_nested():
                await write_note(session, "inside a savepoint")
            session.add(DemoNote(text="after the savepoint"))
            await asyncio.sleep(0.5)  # a relay woken too early has flushed (nothing) by now

        async def published() -> int:
            return (await js.stream_info("DEMO")).state.messages

        assert await wait_until(published, timeout=5) == 1
    finally:
        relay.stop()
        await running
        await nc.close()
        await db.dispose()


async def test_a_commit_hands_its_events_to_the_relay_but_not_those_a_savepoint_rolled_back(
    nats_url: str, database_url: str
) -> None:
    """Published without a poll (the relay's safety net is far away) and without reading the row
    back; an event staged in a savepoint that rolled back was never committed and never leaves.
    The others leave in the order they were staged, whether written at once (outside a savepoint)
    or with a savepoint's flush."""
    await reset_streams(nats_url, "DEMO")
    await asyncio.to_thread(migrations.upgrade, database_url, DEMO_MIGRATIONS)
    db = Database(database_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, "demo")
    relay = OutboxRelay(db, js, source="kizuna/demo", poll_seconds=60)
    handed: list[list[str]] = []
    publish_committed = relay.publish_committed

    async def recorded(rows: Sequence[Staged]) -> None:
        handed.append([row.event_id for row in rows])
        await publish_committed(rows)

    relay.publish_committed = recorded  # type: ignore[method-assign]  # The test records what is handed over.
    running = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)  # the relay's first (empty) flush is done; it now waits
        async with db.transaction() as session:
            kept = await write_note(session, "kept")
            try:
                async with session.begin_nested():
                    await write_note(session, "rolled back")
                    await session.flush()
                    raise RuntimeError("undo the savepoint")
            except RuntimeError:
                pass
            async with session.begin_nested():
                released = await write_note(session, "released")
            last = await write_note(session, "last")

        async def published() -> list[str]:
            return [headers_of(m)["ce-subject"] for m in await stream_messages(nats_url, "demo.note.created")]

        order = ["kept", "released", "last"]
        assert await wait_until(lambda: _all_of(published, 3), timeout=5) == order
        assert handed == [[kept, released, last]]
        await wait_until(lambda: _no_pending(relay))
        await asyncio.sleep(0.3)
        assert await published() == order
        async with db.sessions() as session:
            rows = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
            assert [row.event_id for row in rows] == [kept, released, last]
    finally:
        relay.stop()
        await running
        await nc.close()
        await db.dispose()


async def _all_of(published: Callable[[], Awaitable[list[str]]], count: int) -> list[str] | None:
    found: list[str] = await published()
    return found if len(found) >= count else None


async def _no_pending(relay: OutboxRelay) -> bool:
    return await relay.pending() == 0


async def test_relay_killed_after_publishing_handed_over_rows_takes_effect_once(
    nats_url: str, database_url: str
) -> None:
    """Handed-over rows published, then the mark-sent fails: they stay pending, and the flush that
    follows publishes them again, which JetStream drops as duplicates."""
    await reset_streams(nats_url, "DEMO")
    await asyncio.to_thread(migrations.upgrade, database_url, DEMO_MIGRATIONS)
    db = Database(database_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, "demo")
    try:
        handed: list[Any] = []
        relay = OutboxRelay(db, js, source="kizuna/demo")
        relay._loop = asyncio.get_running_loop()
        events._commit_listeners.append(lambda bind, rows: handed.extend(rows))
        try:
            async with db.transaction() as session:
                await write_note(session, "first")
                await write_note(session, "second")
        finally:
            events._commit_listeners.pop()
        assert [row.subject for row in handed] == ["demo.note.created"] * 2

        async def killed(ids: list[int]) -> None:
            raise ConnectionAbortedError("relay process killed between publish and mark-sent")

        relay._mark_all_sent = killed  # type: ignore[method-assign]  # The relay dies before it marks them sent.
        await relay.publish_committed(handed)
        await relay._mark_unmarked()  # what the relay's marker does next; it fails, and says so
        assert relay._flush_due, "a flush is asked for"
        assert (await js.stream_info("DEMO")).state.messages == 2
        assert await OutboxRelay(db, js, source="kizuna/demo").pending() == 2
        assert await OutboxRelay(db, js, source="kizuna/demo").flush() == 2
        assert (await js.stream_info("DEMO")).state.messages == 2
        assert await OutboxRelay(db, js, source="kizuna/demo").pending() == 0
    finally:
        await nc.close()
        await db.dispose()


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def post_note_in_trace(demo: Runtime[ServiceSettings], text: str, traceparent: str) -> httpx.Response:
    """POST a demo note from within a caller's trace: httpx (instrumented) sends the current one as
    `traceparent`."""
    caller = otel_context.attach(extract_context({"traceparent": traceparent}))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.http_port}") as client:
            created = await client.post("/notes", json={"text": text})
    finally:
        otel_context.detach(caller)
    assert created.status_code == 200, created.text
    return created


async def test_a_failing_handler_logs_json_carrying_the_events_trace(demo: Runtime[ServiceSettings]) -> None:
    """An operator starts from the log line: it is JSON, names the consumer and the event, and its
    trace_id is the trace of the request that published the event."""
    import json
    import logging

    from kizuna.kit.logs import JsonFormatter

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    capture = Capture()
    capture.setFormatter(JsonFormatter("demo"))
    logging.getLogger("kizuna.kit.events").addHandler(capture)
    try:
        created = await post_note_in_trace(demo, "poison-traced", TRACEPARENT)

        async def failure_logged() -> list[dict[str, Any]]:
            entries = [json.loads(line) for line in lines]
            return [e for e in entries if e["message"] == "event handler failed"]

        [first, *_] = await wait_until(failure_logged, timeout=15)
    finally:
        logging.getLogger("kizuna.kit.events").removeHandler(capture)
    assert first["level"] == "ERROR" and first["service"] == "demo"
    assert first["consumer"] == "demo-effects" and first["event_id"] == created.json()["event_id"]
    assert first["trace_id"] == TRACEPARENT.split("-")[1]
    assert len(first["span_id"]) == 16
    assert "cannot handle poison-traced" in first["exception"]
