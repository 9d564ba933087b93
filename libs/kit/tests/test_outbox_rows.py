"""Events staged together in one transaction: their outbox rows, written in one statement, keep the
order they were staged in (ids, and what the commit hands the relay) and every field as given."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kizuna.kit import events, migrations
from kizuna.kit.db import Database
from kizuna.kit.events import OutboxMessage, Outgoing, Staged, publish_all
from sqlmodel import col, select

DEMO_MIGRATIONS = Path(__file__).parent / "demo" / "migrations"
MOMENT = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)


def _event(n: int) -> Outgoing:
    headers = {"ce-id": f"evt_{n:03}", "ce-subject": f"member-{n}", "note": 'ü ✓ "quoted"'}
    return Outgoing(f"evt_{n:03}", f"demo.note.n{n % 3}", bytes([n % 256, 0, 255]), headers, MOMENT + timedelta(0, n))


async def test_many_events_of_one_transaction_keep_their_order_and_fields(database_url: str) -> None:
    await asyncio.to_thread(migrations.upgrade, database_url, DEMO_MIGRATIONS)
    db = Database(database_url)
    handed: list[Staged] = []

    def take(bind: Any, rows: list[Staged]) -> None:
        handed.extend(rows)

    staged = [_event(n) for n in (7, 3, 250, 1, 42)]  # not in the order of their ids' names
    events._commit_listeners.append(take)
    try:
        async with db.transaction() as session:
            await publish_all(session, staged)
        async with db.sessions() as session:
            rows = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
    finally:
        events._commit_listeners.remove(take)
        await db.dispose()
    assert [row.event_id for row in rows] == [event.event_id for event in staged]
    for row, event in zip(rows, staged, strict=True):
        assert (row.subject, row.payload, row.headers, row.created_at) == (
            event.subject,
            event.payload,
            event.headers,
            event.created_at,
        )
        assert row.sent_at is None
    assert [(row.id, row.event_id) for row in handed] == [(row.id, row.event_id) for row in rows]
    assert [row.headers for row in handed] == [event.headers for event in staged]
