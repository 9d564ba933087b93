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
import time
from collections import namedtuple
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import asyncpg
from fastapi import Depends, Request
from kizuna.kit.telemetry import exporting, instrument_database
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy import event, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlalchemy.sql.base import Executable
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

E = TypeVar("E", bound=SQLModel)
T = TypeVar("T")


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


_tracer = trace.get_tracer("kizuna.kit.db")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


RECYCLE_SECONDS = 1800


def is_disconnect(exc: BaseException) -> bool:
    """Whether `exc` is a statement that failed because its connection was dead, run through
    SQLAlchemy or on the driver's connection (`OnDriver`, `Database.driver`, which raise the
    driver's own errors). The pool has then dropped that connection and every older one, so the
    transaction may be run again at once (a COMMIT that failed this way may have committed: retry
    only what is idempotent)."""
    return (isinstance(exc, DBAPIError) and exc.connection_invalidated) or driver_disconnect(exc)


# The server ended the session: an administrator (pg_terminate_backend), a crash, a shutdown.
_SERVER_ENDED = frozenset({"57P01", "57P02", "57P03"})


def driver_disconnect(exc: BaseException) -> bool:
    """Whether `exc`, raised by a statement run on `Database.driver()`'s connection, is that
    connection being dead (closed, reset, or ended by the server)."""
    # Closed, reset, does not exist; or its protocol left mid-operation, as when the server ended
    # the session while the connection sat in the pool ("another operation is in progress").
    if isinstance(exc, OSError | asyncpg.exceptions.InterfaceError | asyncpg.exceptions.InternalClientError):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, asyncpg.PostgresError):
        return sqlstate.startswith("08") or sqlstate in _SERVER_ENDED
    # The driver's error as SQLAlchemy's adapter raised it again (beginning the transaction).
    return exc.__cause__ is not None and driver_disconnect(exc.__cause__)


def _statement_span(operation: str, sql: str) -> AbstractContextManager[object]:
    if not exporting() or not trace.get_current_span().get_span_context().is_valid:
        return nullcontext()
    attributes = {"db.system.name": "postgresql", "db.operation.name": operation.split(" ")[0], "db.query.text": sql}
    return _tracer.start_as_current_span(operation, kind=SpanKind.CLIENT, attributes=attributes)


async def _drop_if_dead(conn: AsyncConnection, exc: BaseException) -> bool:
    """A connection whose driver statement found it dead, or was interrupted mid-statement
    (cancelled), is not for the next caller: it leaves the pool. Found dead, every connection the
    pool opened before it goes too, as SQLAlchemy does on a disconnect of its own statements (after
    a failover they are all dead): each is replaced at its next checkout. Whether it was dropped."""
    dead = driver_disconnect(exc)
    if dead:
        # Pool._invalidate is SQLAlchemy's own step for this; there is no public call for it.
        conn.sync_engine.pool._invalidate(await conn.get_raw_connection(), exc, _checkin=False)
    if dead or not isinstance(exc, Exception):
        await conn.invalidate()
        return True
    return False


async def _on_a_live_connection(attempts: int, run: Callable[[], Awaitable[T]]) -> T:
    """`run()`'s result, run again while it finds its connection dead (each dead one is dropped as
    it is found: after a failover every pooled connection may be), at most `attempts` times."""
    for attempt in range(attempts):
        try:
            return await run()
        except Exception as exc:
            if attempt == attempts - 1 or not driver_disconnect(exc):
                raise
    raise AssertionError("unreachable")


_DRIVER = "kizuna_driver_connection"


async def _connection_of(session: AsyncSession) -> tuple[AsyncConnection, Any]:
    """The session's connection and, on PostgreSQL, its pooled connection (None elsewhere), looked
    up once per transaction: each lookup through the async API costs two greenlet switches."""
    transaction = session.sync_session.get_transaction()
    cached = session.info.get(_DRIVER)
    if cached is not None and transaction is not None and cached[0] is transaction:
        return cached[1], cached[2]
    conn = await session.connection()
    pooled = await conn.get_raw_connection() if conn.dialect.name == "postgresql" else None
    session.info[_DRIVER] = (session.sync_session.get_transaction(), conn, pooled)
    return conn, pooled


class OnDriver:
    """A Core statement run inside a session's transaction on its connection's own asyncpg
    connection, compiled once: on PostgreSQL it skips SQLAlchemy's execution around the statement
    (its parameters are processed as SQLAlchemy would; its rows are named tuples). On SQLite it
    runs through the session's connection as usual.

    For the statements of a hot path that are already Core (no ORM entities, and, as with any
    statement on the session's connection, no autoflush). The statement is compiled for the set of
    parameters given the first time (an INSERT lists the columns it is given); a parameter the
    statement needs and the call does not give is an error, not a NULL."""

    def __init__(self, statement: Executable, operation: str) -> None:
        self.statement = statement
        self.operation = operation
        self._compiled: dict[tuple[str, ...], tuple[str, list[tuple[str, Any, Any]]]] = {}
        self._rows: dict[tuple[str, ...], Any] = {}  # named tuple types, by the rows' column names

    def _compile(self, dialect: Dialect, keys: tuple[str, ...]) -> tuple[str, list[tuple[str, Any, Any]]]:
        """The statement's text for asyncpg and, in its parameters' order, each one's name, bind
        processor and value when the statement carries its own (a literal it compared with)."""
        found = self._compiled.get(keys)
        if found is None:
            statement: Any = self.statement  # every Executable here is a ClauseElement, which compiles
            compiled = statement.compile(dialect=dialect, column_keys=list(keys))
            processors = compiled._bind_processors
            binds = []
            for name in compiled.positiontup or ():
                bind = compiled.binds[name]
                if name not in keys and (bind.required or bind.callable is not None):
                    raise ValueError(f"{self.operation}: no value given for {name}")
                binds.append((name, processors.get(name), bind.value))
            found = self._compiled[keys] = (compiled.string, binds)
        return found

    def _row_type(self, record: asyncpg.Record) -> Any:
        keys = tuple(record.keys())
        row = self._rows.get(keys)
        if row is None:
            row = self._rows[keys] = namedtuple("Row", keys, rename=True)
        return row

    async def fetch(self, session: AsyncSession, params: Mapping[str, Any]) -> Sequence[Any]:
        """The statement's rows (none for a statement without RETURNING)."""
        conn, pooled = await _connection_of(session)
        if pooled is None:
            result = await conn.execute(self.statement, dict(params))
            return result.all() if result.returns_rows else []
        sql, binds = self._compile(conn.dialect, tuple(params))
        args = []
        for name, process, own in binds:
            value = params.get(name, own)
            args.append(value if process is None else process(value))
        adapted: Any = pooled.dbapi_connection
        try:
            async with adapted._execute_mutex:
                if adapted._transaction is None:
                    # SQLAlchemy begins lazily, with the connection's first statement: this may be it.
                    await adapted._start_transaction()
                with _statement_span(self.operation, sql):
                    records = await pooled.driver_connection.fetch(sql, *args)
        except BaseException as exc:
            await _drop_if_dead(conn, exc)
            raise
        if not records:
            return []
        row = self._row_type(records[0])
        return [row._make(record.values()) for record in records]


async def one_moment(session: AsyncSession) -> None:
    """Make every query of the session's transaction read one snapshot (PostgreSQL: REPEATABLE
    READ; SQLite's one writer at a time already gives that), for a check across several queries,
    such as a ledger's audit, on a live database. The isolation level is fixed by the session's
    first query, so a session that has queried already is refused (RuntimeError), not run at a
    snapshot per query."""
    if session.get_bind().dialect.name != "postgresql":
        return
    if session.in_transaction():
        raise RuntimeError("one_moment() needs a session that has not queried yet")
    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


async def flush_pending(session: AsyncSession) -> None:
    """Write the session's pending ORM changes, as its autoflush would before an ORM query: for a
    Core statement on its connection that must see them, or whose rows replace them (`attach`)."""
    if session.new or session.dirty or session.deleted:
        await session.flush()


def attach(session: AsyncSession, model: type[E], row: Any) -> E:
    """The session's persistent `model` entity of a row read by a Core statement (every column of
    the model's table by name; `flush_pending` first), as an ORM query with `populate_existing`
    gives it: an entity the session already holds takes the row's values, another is made from
    them. A hot path's lock skips the ORM's loading this way (points' wallet lock: 0.4 ms of CPU
    less per earning, bench/README.md); what it then changes is written by the next flush."""
    sync = session.sync_session
    mapper = sa_inspect(model)
    values = {column.key: getattr(row, column.key) for column in mapper.columns}
    key = identity_key(model, tuple(values[column.key] for column in mapper.primary_key))
    held = sync.identity_map.get(key)
    if held is not None:
        for name, value in values.items():
            set_committed_value(held, name, value)
        return held
    entity: E = _entity_of(mapper, values)
    make_transient_to_detached(entity)
    sync.add(entity)
    return entity


def unattached(model: type[E], row: Any) -> E:
    """A `model` entity of a row read by a Core statement (every column of the model's table by
    name), in no session: no flush ever writes it, so what is changed on it must be written by the
    caller's own statements. For a hot path that reads and writes its rows with Core statements
    (points' group commit: the session's bookkeeping of its wallets cost more CPU than their
    statements)."""
    mapper = sa_inspect(model)
    entity: E = _entity_of(mapper, {column.key: getattr(row, column.key) for column in mapper.columns})
    return entity


def _entity_of(mapper: Mapper[Any], values: dict[str, Any]) -> Any:
    """Made as the ORM's own loading makes a row's entity: its values set as they are, without the
    model's constructor and its per-field work (defaults, one instrumented set per column), which a
    row read from the database does not need."""
    entity = mapper.class_manager.new_instance()
    entity.__dict__.update(values)
    return entity


def written(entity: SQLModel, columns: Sequence[str]) -> None:
    """`entity`'s `columns` hold what a Core statement of the caller's just wrote: the session's next
    flush has nothing to write for them. When nothing else of the entity changed, it is clean
    again, and the flush does not look at it at all (a flush that found points' wallet changed
    but with nothing to write cost about 0.3 ms of CPU per earning, on every commit)."""
    state = sa_inspect(entity)
    wrote = set(columns)
    if not (state.committed_state.keys() <= wrote and state.dict.keys() >= wrote):
        # Something else changed too (or a column is not loaded): those columns alone are committed.
        for name in columns:
            set_committed_value(entity, name, getattr(entity, name))
        if state.committed_state:
            return
    if state.modified:
        # What a flush does to an entity it wrote (SQLAlchemy has no public call for it).
        session = state.session
        state._commit_all(state.dict, session.identity_map if session is not None else None)


class HeldConnection:
    """One pooled connection kept out of the pool between statements, for a caller whose
    statements run one after another on the driver's connection, outside any transaction (points'
    grouped balance reads): each statement skips the pool's checkout and checkin (SQLAlchemy's
    async connection, its greenlet switches, the return's reset), which cost more CPU than a small
    read itself (bench/README.md). PostgreSQL only; from `Database.held()`.

    Statements are serialized here, so two callers never share the connection at once. A
    statement that finds the connection dead, or is interrupted (cancelled), drops it as
    `Database.fetch` does, and the next is run on a fresh one (at most one attempt per pooled
    connection, and one more). The connection goes back to the pool after RECYCLE_SECONDS held,
    so the pool's recycling still reaches it, and when the database is disposed."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._held: tuple[AsyncConnection, asyncpg.Connection] | None = None  # and its driver's connection
        self._since = 0.0
        self._lock = asyncio.Lock()

    @property
    def holding(self) -> bool:
        """Whether a pooled connection is held now."""
        return self._held is not None

    async def fetch(self, operation: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one statement, as `Database.fetch` has them."""
        async with self._lock:
            return await _on_a_live_connection(self._db.pool_capacity + 1, lambda: self._fetch(operation, sql, args))

    async def _fetch(self, operation: str, sql: str, args: tuple[Any, ...]) -> list[asyncpg.Record]:
        conn, driver = await self._connection()
        try:
            with _statement_span(operation, sql):
                rows: list[asyncpg.Record] = await driver.fetch(sql, *args)
                return rows
        except BaseException as exc:
            if await _drop_if_dead(conn, exc):
                self._held = None
                await conn.close()
            raise

    async def _connection(self) -> tuple[AsyncConnection, asyncpg.Connection]:
        if self._held is not None and time.monotonic() - self._since > RECYCLE_SECONDS:
            await self.release()
        if self._held is None:
            conn = await self._db.engine.connect()
            try:
                pooled = await conn.get_raw_connection()
            except BaseException:
                await conn.close()
                raise
            self._held, self._since = (conn, pooled.driver_connection), time.monotonic()
        return self._held

    async def release(self) -> None:
        """Give the connection back to the pool (the next statement takes one again)."""
        held, self._held = self._held, None
        if held is not None:
            await held[0].close()


class Database:
    """An async engine and session factory for one service's database."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.pool_capacity = 2 * pool_size  # PostgreSQL: connections the pool keeps at most
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # Up to twice pool_size connections, each kept once opened: an overflow connection
            # closed at every return costs a new server process and a fresh prepare of every
            # statement on the next busy moment, which under steady load is every call. No
            # pre-ping; connections older than RECYCLE_SECONDS are replaced at checkout, before a
            # server's or proxy's idle timeout can close them under us.
            kwargs.update(pool_size=self.pool_capacity, max_overflow=0, pool_recycle=RECYCLE_SECONDS)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _make_sqlite_serializable(self.engine)
        # A span per statement, inside the trace of the request, call or event that runs it.
        instrument_database(self.engine)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self._held: list[HeldConnection] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any exception."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection's own asyncpg connection, outside any transaction (each statement
        commits on its own), for a hot read whose statement costs less than SQLAlchemy's work
        around it (points' grouped balance read: 0.4-1.7 ms of CPU less per read, bench/README.md).
        PostgreSQL only; the statement's parameters are asyncpg's (`$1`) and its rows asyncpg's;
        SQLAlchemy's instrumentation does not see it (`fetch` makes its span).

        A statement that finds its connection dead drops it from the pool (`driver_disconnect(exc)`
        is then true), so the caller may run it again at once."""
        if self.is_sqlite:
            raise RuntimeError("Database.driver() is for PostgreSQL")
        async with self.engine.connect() as conn:
            pooled = await conn.get_raw_connection()
            try:
                yield pooled.driver_connection
            except BaseException as exc:
                await _drop_if_dead(conn, exc)
                raise

    async def fetch(self, operation: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one read on `driver()`'s connection; while spans are exported, inside a
        trace, a CLIENT span named `operation` with the statement's text, as SQLAlchemy's
        instrumentation makes for the other statements.

        A statement that finds its connection dead runs again on another: the pool drops each dead
        one, and after a failover every pooled connection may be (at most one attempt per pooled
        connection, and one more)."""

        async def once() -> list[asyncpg.Record]:
            async with self.driver() as conn:
                with _statement_span(operation, sql):
                    rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                    return rows

        return await _on_a_live_connection(self.pool_capacity + 1, once)

    def held(self) -> HeldConnection:
        """A connection held for one caller's statements (`HeldConnection`), given back to the pool
        when this database is disposed. PostgreSQL only."""
        if self.is_sqlite:
            raise RuntimeError("Database.held() is for PostgreSQL")
        held = HeldConnection(self)
        self._held.append(held)
        return held

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        for held in self._held:
            await held.release()
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
