"""Async database access: SQLite by default, PostgreSQL when `DATABASE_URL` says so.

The same code runs on both. On SQLite every transaction starts with `BEGIN IMMEDIATE`, so writers
queue on the database lock instead of failing half-way with "database is locked"; on PostgreSQL,
domain code takes row locks (`SELECT ... FOR UPDATE`) where it needs them.

Connections are not pinged at checkout (a round trip per transaction): a connection that died
(server restart, switchover) fails its first statement with `is_disconnect(exc)` true, the pool
drops every connection opened before it, and the caller runs the transaction again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from kizuna.kit.telemetry import instrument_database
from sqlalchemy import event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel.ext.asyncio.session import AsyncSession


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every engine (SQLite stores no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Kizuna stores only timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


RECYCLE_SECONDS = 1800


def is_disconnect(exc: BaseException) -> bool:
    """Whether `exc` is a statement that failed because its connection was dead. The pool has then
    dropped that connection and every older one, so the transaction may be run again at once
    (a COMMIT that failed this way may have committed: retry only what is idempotent)."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Database:
    """An async engine and session factory for one service's database."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # Up to twice pool_size connections, each kept once opened: an overflow connection
            # closed at every return costs a new server process and a fresh prepare of every
            # statement on the next busy moment, which under steady load is every call. No
            # pre-ping; connections older than RECYCLE_SECONDS are replaced at checkout, before a
            # server's or proxy's idle timeout can close them under us.
            kwargs.update(pool_size=2 * pool_size, max_overflow=0, pool_recycle=RECYCLE_SECONDS)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _make_sqlite_serializable(self.engine)
        # A span per statement, inside the trace of the request, call or event that runs it.
        instrument_database(self.engine)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any exception."""
        async with self.sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _make_sqlite_serializable(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN IMMEDIATE below is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def _session_dependency(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.runtime.db
    async with db.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session_dependency)]
"""A database session for a FastAPI route; the route commits what it means to keep."""


T = TypeVar("T")


def run_in_session(database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one session on an engine of its own, then dispose of it (for one-shot CLI
    commands such as `python -m points audit`; blocking)."""

    async def run() -> T:
        db = Database(database_url)
        try:
            async with db.sessions() as session:
                return await work(session)
        finally:
            await db.dispose()

    return asyncio.run(run())
