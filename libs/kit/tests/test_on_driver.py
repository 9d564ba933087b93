"""`OnDriver`, `attach`, `flush_pending` and `written`: a hot path's Core statements run inside a session's
transaction on the connection's own asyncpg connection (PostgreSQL) or through SQLAlchemy
(SQLite), and rows they read become the session's entities, with the same results either way:
the statement commits and rolls back with the session, its parameters are processed by their
column types, the values it carries are its own, and an entity read this way is written by the
next flush like one the ORM loaded; what a Core statement wrote of an entity is not written again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from kizuna.kit.db import Database, OnDriver, attach, driver_disconnect, flush_pending, unattached, written
from kizuna.kit.events import InboxMessage
from sqlalchemy import bindparam, event, insert, select, update
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

INBOX = SQLModel.metadata.tables["kit_inbox"]
_INSERT = OnDriver(insert(INBOX).returning(INBOX.c.event_id), "INSERT kit_inbox")
# The literal compared with is the statement's own value, not a parameter the caller gives.
_READ_ONE_SUBJECT = OnDriver(
    select(INBOX).where(INBOX.c.consumer == bindparam("consumer"), INBOX.c.subject == "shop.one").with_for_update(),
    "SELECT kit_inbox",
)
_READ = OnDriver(select(INBOX).where(INBOX.c.consumer == bindparam("consumer")).with_for_update(), "SELECT kit_inbox")
_SET_SUBJECT = OnDriver(
    update(INBOX)
    .where(INBOX.c.consumer == bindparam("of"), INBOX.c.event_id == bindparam("id"))
    .values(subject=bindparam("new_subject")),
    "UPDATE kit_inbox",
)
MOMENT = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


async def _database(url: str) -> Database:
    db = Database(url, pool_size=2)
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda sync: SQLModel.metadata.create_all(sync, tables=[INBOX]))
    return db


def _row(event_id: str, subject: str = "shop.one", at: datetime = MOMENT) -> dict[str, object]:
    return {"consumer": "c", "event_id": event_id, "subject": subject, "processed_at": at}


def _statements_of(db: Database) -> list[str]:
    """Every statement SQLAlchemy sends for `db` from now on (the driver's own statements aside)."""
    sent: list[str] = []
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


def _updates(statements: list[str]) -> list[str]:
    return [sql for sql in statements if sql.lstrip().upper().startswith("UPDATE")]


async def _read_as_entity(session: AsyncSession) -> InboxMessage:
    """The one inbox row, read by a Core statement and made the session's entity."""
    (row,) = await _READ.fetch(session, {"consumer": "c"})
    return attach(session, InboxMessage, row)


async def test_a_driver_statement_commits_and_rolls_back_with_its_session(database_url: str) -> None:
    db = await _database(database_url)
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as session:
                # The transaction's first statement: on PostgreSQL it begins the transaction.
                assert [row.event_id for row in await _INSERT.fetch(session, _row("rolled-back"))] == ["rolled-back"]
                raise RuntimeError("rolled back")
        async with db.transaction() as session:
            await _INSERT.fetch(session, _row("kept"))
            # The same moment in another timezone: stored as that moment, read back in UTC.
            await _INSERT.fetch(session, _row("other", "shop.two", MOMENT.astimezone(timezone(timedelta(hours=9)))))
        async with db.sessions() as session:
            rows = await _READ_ONE_SUBJECT.fetch(session, {"consumer": "c"})
            everything = await _READ.fetch(session, {"consumer": "c"})
        assert [(row.event_id, row.processed_at) for row in rows] == [("kept", MOMENT)]
        assert sorted(row.event_id for row in everything) == ["kept", "other"]
        assert {row.processed_at for row in everything} == {MOMENT}
        assert {row.processed_at.utcoffset() for row in everything} == {timedelta(0)}
        # Refused by the column's type, whose bind processing the driver's path runs too.
        with pytest.raises(Exception, match="naive datetime"):
            async with db.transaction() as session:
                await _INSERT.fetch(session, _row("naive", at=MOMENT.replace(tzinfo=None)))
    finally:
        await db.dispose()


async def test_a_parameter_the_statement_needs_and_is_not_given_is_an_error(postgres_url: str) -> None:
    db = await _database(postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with db.transaction() as session:
            with pytest.raises(ValueError, match="no value given for consumer"):
                await _READ.fetch(session, {})
    finally:
        await db.dispose()


async def test_a_row_read_by_core_becomes_the_sessions_entity(database_url: str) -> None:
    db = await _database(database_url)
    try:
        async with db.transaction() as session:
            await _INSERT.fetch(session, _row("e1"))
        async with db.transaction() as session:
            entity = await _read_as_entity(session)
            assert entity in session and not session.dirty
            assert (entity.event_id, entity.processed_at) == ("e1", MOMENT)
            entity.subject = "shop.changed"  # written by the commit's flush
        async with db.transaction() as session:
            held = await session.get(InboxMessage, ("c", "e1"))
            assert held is not None and held.subject == "shop.changed"
            held.subject = "shop.pending"
            # The ORM would flush before its query; a Core read asks for it, and then the entity
            # the session holds takes the row's values (what the flush wrote).
            await flush_pending(session)
            (row,) = await _READ.fetch(session, {"consumer": "c"})
            assert row.subject == "shop.pending"
            assert attach(session, InboxMessage, row) is held
        async with db.sessions() as session:
            found = await session.get(InboxMessage, ("c", "e1"))
            assert found is not None and found.subject == "shop.pending"
    finally:
        await db.dispose()


async def test_what_a_core_statement_wrote_is_not_flushed_again_and_the_rest_still_is(database_url: str) -> None:
    db = await _database(database_url)
    flushed = _statements_of(db)
    try:
        async with db.transaction() as session:
            await _INSERT.fetch(session, _row("e1"))
        async with db.transaction() as session:
            entity = await _read_as_entity(session)
            entity.subject = "shop.by-core"
            await _SET_SUBJECT.fetch(session, {"of": "c", "id": "e1", "new_subject": entity.subject})
            written(entity, ["subject"])
            # All it changed is written: the entity is clean, and the commit has nothing to flush.
            assert not session.dirty
            flushed.clear()
        assert not _updates(flushed)
        async with db.transaction() as session:
            entity = await _read_as_entity(session)
            assert entity.subject == "shop.by-core"
            entity.subject = "shop.again"
            entity.processed_at = MOMENT + timedelta(minutes=1)
            await _SET_SUBJECT.fetch(session, {"of": "c", "id": "e1", "new_subject": entity.subject})
            written(entity, ["subject"])
            # The time was not written by the statement: the entity stays dirty, the flush writes it.
            assert entity in session.dirty
        async with db.sessions() as session:
            found = await session.get(InboxMessage, ("c", "e1"))
            assert found is not None
            assert (found.subject, found.processed_at) == ("shop.again", MOMENT + timedelta(minutes=1))
    finally:
        await db.dispose()


async def test_an_unattached_entity_is_written_by_its_callers_statement_only(database_url: str) -> None:
    db = await _database(database_url)
    statements = _statements_of(db)
    try:
        async with db.transaction() as session:
            await _INSERT.fetch(session, _row("e1"))
        async with db.transaction() as session:
            (row,) = await _READ.fetch(session, {"consumer": "c"})
            entity = unattached(InboxMessage, row)
            assert (entity.consumer, entity.event_id, entity.subject, entity.processed_at) == tuple(row)
            assert entity not in session and not session.dirty
            entity.subject = "shop.changed-in-memory"
            entity.processed_at = MOMENT + timedelta(minutes=5)
            statements.clear()
        # Nothing the session knows of changed: its commit wrote nothing.
        assert not _updates(statements)
        async with db.transaction() as session:
            (row,) = await _READ.fetch(session, {"consumer": "c"})
            entity = unattached(InboxMessage, row)
            assert (entity.subject, entity.processed_at) == ("shop.one", MOMENT)
            entity.subject = "shop.by-core"
            await _SET_SUBJECT.fetch(session, {"of": "c", "id": "e1", "new_subject": entity.subject})
        async with db.sessions() as session:
            found = await session.get(InboxMessage, ("c", "e1"))
            assert found is not None
            assert (found.subject, found.processed_at) == ("shop.by-core", MOMENT)
    finally:
        await db.dispose()


async def test_a_dead_connection_fails_the_transaction_and_leaves_the_pool(postgres_url: str) -> None:
    db = await _database(postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    admin = await asyncpg.connect(postgres_url)
    try:
        one = OnDriver(select(bindparam("one")), "SELECT")
        ended = 0
        # asyncpg's error, whichever the dead connection gives.
        with pytest.raises(Exception) as failed:
            async with db.transaction() as session:
                await _INSERT.fetch(session, _row("lost"))
                ended = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND state = 'idle in transaction'"
                )
                await admin.execute("SELECT pg_terminate_backend($1)", ended)
                await one.fetch(session, {"one": 1})
        assert driver_disconnect(failed.value), failed.value
        async with db.transaction() as session:
            await _INSERT.fetch(session, _row("next"))
            conn = await session.connection()
            pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
        assert pid != ended, "the dead connection left the pool"
        async with db.sessions() as session:
            assert [row.event_id for row in await _READ.fetch(session, {"consumer": "c"})] == ["next"]
    finally:
        await admin.close()
        await db.dispose()
