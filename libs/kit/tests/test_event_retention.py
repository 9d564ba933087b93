"""The event tables do not grow for ever: published outbox rows and inbox rows older than their
retention are pruned in bounded batches (never an unpublished row, never an inbox row still
needed to absorb a redelivery), and the outbox backlog is measured; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from kizuna.kit import migrations
from kizuna.kit.db import Database, utcnow
from kizuna.kit.events import (
    Backlog,
    Consumer,
    ConsumerWorker,
    InboxMessage,
    OutboxMessage,
    OutboxRelay,
    ensure_stream,
    event_id_bound,
    new_event_id,
    outbox_backlog,
    prune_inbox,
    prune_outbox,
)
from kizuna.kit.settings import ServiceSettings, SettingsError, load_settings
from kizuna.kit.testing import reset_streams, wait_until
from nats.js.api import ConsumerInfo
from sqlmodel import col, select
from ulid import ULID

from .demo.service import DemoEffect, record_effect, write_note

DEMO_MIGRATIONS = Path(__file__).parent / "demo" / "migrations"
DAY = timedelta(days=1)


def event_id_at(moment: datetime) -> str:
    """An event id as `publish` makes it, for an event created at `moment`."""
    return f"evt_{ULID.from_datetime(moment)}"


async def migrated(database_url: str) -> Database:
    await asyncio.to_thread(migrations.upgrade, database_url, DEMO_MIGRATIONS)
    return Database(database_url)


def outbox_row(created: datetime, sent: datetime | None) -> OutboxMessage:
    return OutboxMessage(
        event_id=event_id_at(created),
        subject="demo.note.created",
        payload=b"x",
        headers={},
        created_at=created,
        sent_at=sent,
    )


async def ids(db: Database, model: type[OutboxMessage] | type[InboxMessage]) -> set[str]:
    async with db.sessions() as session:
        return set((await session.exec(select(model.event_id))).all())


def test_event_id_bound_orders_ids_by_creation_time() -> None:
    cutoff = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    bound = event_id_bound(cutoff)
    for earlier in (cutoff - timedelta(milliseconds=1), cutoff - timedelta(days=400), datetime(2020, 1, 1, tzinfo=UTC)):
        assert "evt_" <= event_id_at(earlier) < bound
    for later in (cutoff, cutoff + timedelta(milliseconds=1), cutoff + timedelta(days=400)):
        assert event_id_at(later) >= bound
    assert new_event_id() >= event_id_bound(utcnow() - timedelta(seconds=1))


async def test_prune_outbox_deletes_only_published_rows_past_retention(database_url: str) -> None:
    db = await migrated(database_url)
    now = utcnow()
    old_sent = [outbox_row(now - 10 * DAY - timedelta(minutes=i), now - 10 * DAY) for i in range(7)]
    old_unsent = outbox_row(now - 30 * DAY, None)
    recent_sent = outbox_row(now - 2 * DAY, now - 2 * DAY)
    try:
        async with db.transaction() as session:
            session.add_all([*old_sent, old_unsent, recent_sent])
        # Bounded: at most batch_size x max_batches rows per call; the next call continues.
        assert await prune_outbox(db, now - 7 * DAY, batch_size=2, max_batches=2) == 4
        assert await prune_outbox(db, now - 7 * DAY, batch_size=2, max_batches=10) == 3
        assert await prune_outbox(db, now - 7 * DAY, batch_size=2) == 0
        assert await ids(db, OutboxMessage) == {old_unsent.event_id, recent_sent.event_id}

        backlog = await outbox_backlog(db)
        assert backlog.pending == 1
        assert 30 * DAY.total_seconds() - 60 < backlog.oldest_age_seconds < 30 * DAY.total_seconds() + 60
    finally:
        await db.dispose()


async def test_prune_inbox_keeps_every_row_a_redelivery_could_still_need(database_url: str) -> None:
    db = await migrated(database_url)
    now = utcnow()
    cutoff = now - 35 * DAY
    old = [
        InboxMessage(
            consumer=consumer,
            event_id=event_id_at(now - 40 * DAY + timedelta(seconds=i)),
            subject="s",
            processed_at=now - 40 * DAY,
        )
        for consumer in ("points-shop-earn", "points-travel-earn", "shop-orders")
        for i in range(3)
    ]
    kept = [
        # Processed recently, though created long ago (its relay was held up): it may still be
        # on the stream.
        InboxMessage(consumer="shop-orders", event_id=event_id_at(now - 50 * DAY), subject="s", processed_at=now - DAY),
        InboxMessage(consumer="shop-orders", event_id=event_id_at(now - DAY), subject="s", processed_at=now - DAY),
        # Not a kit event id: its creation time is unknown.
        InboxMessage(consumer="shop-orders", event_id="SHOP:17", subject="s", processed_at=now - 90 * DAY),
    ]
    try:
        async with db.transaction() as session:
            session.add_all([*old, *kept])
        assert await prune_inbox(db, cutoff, batch_size=2, max_batches=3) == 5, "bounded per call"
        assert await prune_inbox(db, cutoff, batch_size=2) == 4
        assert await prune_inbox(db, cutoff) == 0
        assert await ids(db, InboxMessage) == {k.event_id for k in kept}
    finally:
        await db.dispose()


async def test_relay_housekeeping_prunes_and_a_recent_redelivery_is_still_absorbed(
    nats_url: str, database_url: str
) -> None:
    """The running relay prunes on its own; an event processed within the inbox's retention and
    delivered again (a consumer reset, a republished dead letter) still takes effect once."""
    await reset_streams(nats_url, "DEMO", "DEADLETTER")
    db = await migrated(database_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, "demo")
    now = utcnow()
    stale = outbox_row(now - 3 * DAY, now - 3 * DAY)
    stale_inbox = InboxMessage(
        consumer="demo-effects", event_id=event_id_at(now - 40 * DAY), subject="s", processed_at=now - 40 * DAY
    )
    relay = OutboxRelay(
        db,
        js,
        source="kizuna/demo",
        poll_seconds=0.1,
        outbox_retention_seconds=DAY.total_seconds(),
        inbox_retention_seconds=35 * DAY.total_seconds(),
        housekeeping_seconds=0.2,
    )
    worker = ConsumerWorker(Consumer("demo-effects", ["demo.note.created"], record_effect), db, js)
    relay_task = asyncio.create_task(relay.run())
    worker_task = asyncio.create_task(worker.run())
    try:
        async with db.transaction() as session:
            session.add_all([stale, stale_inbox])
            event_id = await write_note(session, "kept")

        async def pruned() -> bool:
            return stale.event_id not in await ids(db, OutboxMessage) and stale_inbox.event_id not in await ids(
                db, InboxMessage
            )

        assert await wait_until(pruned, timeout=20)
        assert await wait_until(lambda: _effects(db), timeout=20) == ["kept"]
        assert event_id in await ids(db, OutboxMessage), "published just now: kept for its retention"
        assert event_id in await ids(db, InboxMessage)

        # Delivered again past the duplicate window (a new Nats-Msg-Id, the same event id).
        sub = await js.pull_subscribe("demo.note.created", stream="DEMO")
        (original,) = await sub.fetch(1, timeout=5)
        headers = dict(original.headers or {})
        headers["Nats-Msg-Id"] = f"{event_id}-again"
        await js.publish("demo.note.created", original.data, headers=headers)
        await wait_until(lambda: _consumed_all(js), timeout=20)
        assert await _effects(db) == ["kept"]
        assert (await outbox_backlog(db)).pending == 0
    finally:
        relay.stop()
        worker.stop()
        await asyncio.gather(relay_task, worker_task)
        await worker.close()
        await nc.close()
        await db.dispose()


async def _effects(db: Database) -> list[str] | None:
    async with db.sessions() as session:
        found = list((await session.exec(select(DemoEffect.text).order_by(col(DemoEffect.id)))).all())
    return found or None


async def _consumed_all(js: nats.js.JetStreamContext) -> bool:
    info: ConsumerInfo = await js.consumer_info("DEMO", "demo-effects")
    assert info.delivered is not None
    return info.delivered.stream_seq >= 2 and info.num_pending == 0 and info.num_ack_pending == 0


async def test_the_outbox_backlog_is_measured_while_nats_is_unreachable(database_url: str) -> None:
    db = await migrated(database_url)
    try:
        assert await outbox_backlog(db) == Backlog(0, 0.0)
        async with db.transaction() as session:
            session.add(outbox_row(utcnow() - timedelta(minutes=5), None))
            await write_note(session, "waiting")
        backlog = await outbox_backlog(db)
        assert backlog.pending == 2
        assert 290 < backlog.oldest_age_seconds < 400
    finally:
        await db.dispose()


def test_inbox_retention_must_outlive_the_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("KIZUNA_ISSUER", "http://127.0.0.1:8000")
    monkeypatch.setenv("STREAM_MAX_AGE_SECONDS", str(30 * 86400))
    monkeypatch.setenv("INBOX_RETENTION_SECONDS", str(30 * 86400))
    with pytest.raises(SettingsError, match=r"INBOX_RETENTION_SECONDS.*longer than STREAM_MAX_AGE_SECONDS"):
        load_settings(ServiceSettings)
    monkeypatch.setenv("INBOX_RETENTION_SECONDS", str(35 * 86400))
    monkeypatch.setenv("OUTBOX_RETENTION_SECONDS", "60")
    with pytest.raises(SettingsError, match=r"OUTBOX_RETENTION_SECONDS.*duplicate window"):
        load_settings(ServiceSettings)
    monkeypatch.setenv("OUTBOX_RETENTION_SECONDS", "0")
    settings = load_settings(ServiceSettings)
    assert settings.outbox_retention_seconds == 0 and settings.inbox_retention_seconds == 35 * 86400


async def test_replicas_pruning_at_once_delete_every_row_once(database_url: str) -> None:
    """Every pod of a service prunes the same database: side by side they neither wait on each
    other's batches (PostgreSQL: SKIP LOCKED) nor leave rows behind."""
    db = await migrated(database_url)
    replicas = [Database(database_url) for _ in range(3)]
    now = utcnow()
    try:
        async with db.transaction() as session:
            session.add_all(outbox_row(now - 9 * DAY - timedelta(seconds=i), now - 9 * DAY) for i in range(90))
        counts = await asyncio.gather(*(prune_outbox(r, now - 7 * DAY, batch_size=7) for r in replicas))
        assert sum(counts) == 90
        assert await ids(db, OutboxMessage) == set()
    finally:
        for r in replicas:
            await r.dispose()
        await db.dispose()
