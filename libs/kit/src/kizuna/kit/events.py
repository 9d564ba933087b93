"""The event path: transactional outbox -> relay -> JetStream -> durable consumer with an inbox.

- `await publish(session, subject, message)` stages an event in the same transaction as the
  business change; nothing reaches NATS unless that transaction commits.
- `OutboxRelay` publishes staged events with `Nats-Msg-Id` = event id (JetStream de-duplicates a
  re-publish after a crash) and marks them sent.
- `Consumer` declares a durable pull consumer; `ConsumerWorker` runs it: the handler's effect and
  an inbox row keyed by the event id commit together, so a redelivered event is acknowledged
  without effect. After `max_deliver` failed attempts the event goes to
  `deadletter.<service>.<consumer>`. A consumer whose handler allows it handles several events at
  once (`concurrency`), one member's still one after another.
- Neither table grows for ever: the relay's housekeeping (`prune_outbox`, `prune_inbox`) deletes
  published outbox rows and inbox rows older than their retention, in bounded batches, and
  measures the outbox backlog (`kizuna.outbox.pending`, `kizuna.outbox.oldest_pending.age`).
  An inbox row must outlive every redelivery of its event: its retention is longer than the
  streams keep events (`STREAM_MAX_AGE_SECONDS`), which is longer than the duplicate window.

Who sent an event is what the broker enforces, never a header: a service may publish only under
its own name (`shop.>`) and the commands its declaration lists, with itself as the last token
(`points.credit.requested.shop`); see `Event.owner` and `command_sender` (and kizuna.kit.natsauth).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from kizuna.kit.bounds import check_message
from kizuna.kit.db import Database, OnDriver, UTCDateTime, utcnow
from kizuna.kit.errors import InvalidArgument
from kizuna.kit.telemetry import (
    dead_letters,
    exporting,
    extract_context,
    inject_headers,
    messages_consumed,
    messages_published,
    meter,
    tracer,
)
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import ARRAY, Column, ColumnElement, LargeBinary, String, and_, bindparam, delete, func, text, update
from sqlalchemy import event as sa_event
from sqlalchemy import insert as sa_insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session
from sqlmodel import JSON, Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

log = logging.getLogger("kizuna.kit.events")

DEAD_LETTER_STREAM = "DEADLETTER"
DEAD_LETTER_PREFIX = "deadletter"
DUPLICATE_WINDOW_SECONDS = 120.0
# What the dead-letter stream keeps when nobody says otherwise (deploy/render.py sets its own from
# the NATS store): replay or remove dead letters well within this.
DEAD_LETTER_MAX_AGE_SECONDS = 30 * 24 * 3600.0
DEAD_LETTER_MAX_BYTES = 1024**3
DEAD_LETTER_MAX_MSGS = 100_000
# How long published outbox rows and inbox rows are kept by default (ServiceSettings overrides).
OUTBOX_RETENTION_SECONDS = 7 * 24 * 3600.0
INBOX_RETENTION_SECONDS = 35 * 24 * 3600.0
# Rows deleted per statement (each batch is its own short transaction) and per housekeeping round.
PRUNE_BATCH_SIZE = 500
PRUNE_MAX_BATCHES = 40
# How many ids of rows a flush published the relay remembers, not to publish them again when a
# commit hands them over meanwhile (beyond it such a row goes out twice; JetStream drops the copy).
FLUSHED_IDS_KEPT = 10_000
# The backlog count stops here: beyond it the number is only "very many", and counting costs.
BACKLOG_COUNT_CAP = 1_000_000
# How long the relay waits for JetStream to acknowledge what it sent (then it flushes again).
PUBLISH_TIMEOUT_SECONDS = 5.0
# After a failed round the relay waits this long (or for the next commit) before trying again.
RETRY_PAUSE_SECONDS = 0.5

outbox_pending = meter.create_gauge(
    "kizuna.outbox.pending", description="Outbox rows not yet published to JetStream (capped at 1,000,000)"
)
outbox_oldest_pending_age = meter.create_gauge(
    "kizuna.outbox.oldest_pending.age", unit="s", description="Age of the oldest outbox row not yet published"
)
rows_pruned = meter.create_counter(
    "kizuna.events.pruned", description="Published outbox rows and inbox rows deleted after their retention"
)


class OutboxMessage(SQLModel, table=True):
    """An event staged with a business change, waiting for the relay."""

    __tablename__ = "kit_outbox"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(String(40), unique=True, nullable=False))
    subject: str = Field(sa_column=Column(String(200), nullable=False))
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, index=True))


class InboxMessage(SQLModel, table=True):
    """An event a consumer has taken effect for; its presence makes a redelivery a no-op."""

    __tablename__ = "kit_inbox"

    consumer: str = Field(sa_column=Column(String(100), primary_key=True))
    event_id: str = Field(sa_column=Column(String(100), primary_key=True))
    subject: str = Field(sa_column=Column(String(200), nullable=False))
    processed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


def new_event_id() -> str:
    """A sortable unique event id (`evt_` + ULID)."""
    return f"evt_{ULID()}"


class Outgoing(NamedTuple):
    """An event ready for the outbox: built (ids, headers, the trace context) where it happens."""

    event_id: str
    subject: str
    payload: bytes
    headers: dict[str, str]
    created_at: datetime


def outgoing(
    subject: str,
    message: ProtoMessage,
    *,
    member_id: str | None = None,
    event_id: str | None = None,
    context: Context | None = None,
) -> Outgoing:
    """The outbox row for `message` on `subject`, carrying the trace context of the current span (or
    of `context`: work done on a caller's behalf in another task, such as a group commit)."""
    event_id = event_id or new_event_id()
    now = utcnow()
    headers = {
        "Nats-Msg-Id": event_id,
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-type": f"kizuna.{subject}",
        "ce-time": now.isoformat(),
        "content-type": "application/protobuf",
        "ce-dataschema": f"proto:{message.DESCRIPTOR.full_name}",
    }
    if member_id:
        headers["ce-subject"] = member_id
    inject_headers(headers, context)
    return Outgoing(event_id, subject, message.SerializeToString(deterministic=True), headers, now)


async def publish(
    session: AsyncSession,
    subject: str,
    message: ProtoMessage,
    *,
    member_id: str | None = None,
    event_id: str | None = None,
) -> str:
    """Stage `message` for `subject` in the session's transaction; returns the event id.

    The event is published by the relay after the transaction commits, and never if it rolls back.
    """
    event = outgoing(subject, message, member_id=member_id, event_id=event_id)
    await publish_all(session, [event])
    return event.event_id


async def publish_all(session: AsyncSession, events: Sequence[Outgoing]) -> None:
    """Stage events (see `outgoing`) in the session's transaction, in this order.

    The outbox rows are written at once, in one INSERT in order with the transaction's other
    statements (the ORM's flush of one row cost a Credit in points 12% of its CPU). Inside a
    savepoint they are added to the session instead and written with the savepoint's flush, so that
    rolling the savepoint back takes them with it; events still get ids, and leave, in the order
    they were staged.
    """
    if not events:
        return
    staged: list[OutboxMessage | Staged] = session.sync_session.info.setdefault(_STAGED, [])
    if session.sync_session.in_nested_transaction():
        for event in events:
            row = OutboxMessage(
                event_id=event.event_id,
                subject=event.subject,
                payload=event.payload,
                headers=event.headers,
                created_at=event.created_at,
            )
            session.add(row)
            staged.append(row)
        return
    if len(events) == 1:
        ((id_,),) = await _INSERT_OUTBOX.fetch(session, events[0]._asdict())
        ids = [id_]
    elif session.bind is not None and session.bind.dialect.name == "postgresql":
        columns = ("event_id", "subject", "payload", "headers", "created_at")
        arrays = {name: [getattr(event, name) for event in events] for name in columns}
        by_event = {row.event_id: row.id for row in await _INSERT_OUTBOX_MANY_PG.fetch(session, arrays)}
        ids = [by_event[event.event_id] for event in events]
    else:
        conn = await session.connection()
        ids = list((await conn.execute(_INSERT_OUTBOX_MANY, [e._asdict() for e in events])).scalars())
    staged.extend(Staged(i, e.event_id, e.subject, e.payload, e.headers) for i, e in zip(ids, events, strict=True))


_STAGED = "kizuna_outbox_staged"
OUTBOX = SQLModel.metadata.tables["kit_outbox"]
_INSERT_OUTBOX = OnDriver(sa_insert(OutboxMessage).returning(OUTBOX.c.id), "INSERT kit_outbox")
# Many rows in one statement (SQLAlchemy's "insertmanyvalues"), their ids in the rows' order.
_INSERT_OUTBOX_MANY = sa_insert(OutboxMessage).returning(OUTBOX.c.id, sort_by_parameter_order=True)
# The same on PostgreSQL, on the driver's connection: one statement of arrays, its ids given in the
# rows' order (ORDER BY the arrays' ordinality), without SQLAlchemy's work per row.
_INSERT_OUTBOX_MANY_PG = OnDriver(
    text("""INSERT INTO kit_outbox (event_id, subject, payload, headers, created_at)
SELECT u.event_id, u.subject, u.payload, u.headers, u.created_at
FROM unnest(:event_id, :subject, :payload, :headers, :created_at)
  WITH ORDINALITY AS u(event_id, subject, payload, headers, created_at, n)
ORDER BY u.n
RETURNING id, event_id""").bindparams(
        *(
            bindparam(name, type_=ARRAY(OUTBOX.c[name].type))
            for name in ("event_id", "subject", "payload", "headers", "created_at")
        )
    ),
    "INSERT kit_outbox",
)


# Built once: a new UPDATE per batch (its IN list a fresh construct each time) cost 3% of a
# Credit's CPU in points (py-spy, bench/points_bench.py) to build and look up in the cache.
_MARK_SENT = (
    update(OutboxMessage)
    .where(col(OutboxMessage.id).in_(bindparam("ids", expanding=True)), col(OutboxMessage.sent_at).is_(None))
    .values(sent_at=bindparam("now", type_=UTCDateTime()))
)


# _MARK_SENT on PostgreSQL's own connection (`Database.fetch`): the ids as one array parameter.
_MARK_SENT_PG = "UPDATE kit_outbox SET sent_at = $2 WHERE id = ANY($1::bigint[]) AND sent_at IS NULL"


class Staged(NamedTuple):
    """An outbox row as its transaction committed it, handed to the relay by the commit."""

    id: int
    event_id: str
    subject: str
    payload: bytes
    headers: dict[str, str]


# Called after an outermost commit that staged events: (the session's bind, the rows it committed).
_commit_listeners: list[Callable[[Any, list[Staged]], None]] = []


# Both events also fire when a savepoint (begin_nested) is released or rolled back; only the
# outermost transaction's end decides whether the staged rows exist. A row staged in a savepoint
# that rolled back is no longer persistent after the commit (SQLAlchemy made it transient again),
# so it is not handed to the relays; a rollback may leave only such rows: one harmless extra wake.
# Rows written at once (`Staged`, outside any savepoint) exist exactly when the transaction commits.
@sa_event.listens_for(Session, "after_commit")
def _wake_relays(session: Session) -> None:
    if session.in_nested_transaction():
        return
    staged: list[OutboxMessage | Staged] | None = session.info.pop(_STAGED, None)
    if staged:
        committed: list[Staged] = []
        for row in staged:
            if isinstance(row, Staged):
                committed.append(row)
            elif row.id is not None and sa_inspect(row).persistent:
                committed.append(Staged(row.id, row.event_id, row.subject, row.payload, row.headers))
        for wake in list(_commit_listeners):
            wake(session.bind, committed)


@sa_event.listens_for(Session, "after_rollback")
def _forget_staged(session: Session) -> None:
    if not session.in_nested_transaction():
        session.info.pop(_STAGED, None)


@dataclass(frozen=True)
class StreamLimits:
    """What a stream keeps at most (0 / -1: no limit); beyond it the oldest messages go."""

    max_age_seconds: float = 0.0
    max_bytes: int = -1
    max_msgs: int = -1


DEAD_LETTER_LIMITS = StreamLimits(DEAD_LETTER_MAX_AGE_SECONDS, DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_MSGS)


def stream_name_for(subject: str) -> str:
    """Each producing service owns one stream named after the subject's first token."""
    return subject.split(".", 1)[0].upper()


async def ensure_stream(
    js: JetStreamContext,
    name: str,
    *,
    replicas: int = 1,
    owner: bool = True,
    max_age_seconds: float = 0.0,
    max_bytes: int = -1,
    max_msgs: int = -1,
) -> None:
    """Create or update the stream `NAME` for subjects `name.>` (idempotent; every replica may call it).

    A service that only reads a stream (`owner=False`) creates it if its producer has not yet,
    and never changes an existing one: the broker lets it create, not update, others' streams.
    The owner's limits (`max_age_seconds`, `max_bytes`, `max_msgs`; 0 / -1: none) apply when it
    starts; beyond them the oldest messages go.
    """
    config = StreamConfig(
        name=name.upper(),
        subjects=[f"{name.lower()}.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
        max_age=max_age_seconds if max_age_seconds > 0 else None,
        max_bytes=max_bytes if max_bytes > 0 else None,
        max_msgs=max_msgs if max_msgs > 0 else None,
        discard=DiscardPolicy.OLD,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        if not owner:
            await js.stream_info(config.name or name.upper())  # it exists (with its owner's settings)
            return
        await js.update_stream(config)


def _count_published(subject: str, ack: asyncio.Future[Any]) -> None:
    """Count a message JetStream acknowledged (`ack`'s callback)."""
    if not ack.cancelled() and ack.exception() is None:
        messages_published.add(1, {"messaging.destination.name": subject})


class OutboxRelay:
    """Publishes committed outbox rows to JetStream and marks them sent.

    Two ways to the same result. A commit in this process hands the relay the rows it staged, and
    the relay publishes them at once without reading them back (no query before the publish, the
    event's latency path). `flush` reads every unsent row instead, oldest first, under
    `FOR UPDATE SKIP LOCKED` so that replicas share the work: when the relay starts, after any
    failure, when a commit's rows could not be handed over, and every `poll_seconds` as the safety
    net for rows whose process died before publishing them. Rows are handed over only while the
    last flush left no backlog, so events still leave in the order they committed. A row published
    twice (by both ways, or by two replicas) is dropped by JetStream as a duplicate of its
    `Nats-Msg-Id` (the consumers' inboxes absorb one seen after the duplicate window).

    Rows are sent one after another without waiting for each acknowledgement (one connection keeps
    them in order), and a batch counts as published once JetStream has acknowledged every row.
    Handed-over rows are marked sent beside the publishing, not before the next rows may go: a
    flush marks what is still unmarked before it reads the outbox, so it does not send them again.
    """

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        *,
        source: str,
        poll_seconds: float = 1.0,
        batch_size: int = 100,
        outbox_retention_seconds: float = OUTBOX_RETENTION_SECONDS,
        inbox_retention_seconds: float = INBOX_RETENTION_SECONDS,
        housekeeping_seconds: float = 60.0,
    ) -> None:
        self.db = db
        self.js = js
        self.source = source
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        # 0: keep that table's rows for ever.
        self.outbox_retention_seconds = outbox_retention_seconds
        self.inbox_retention_seconds = inbox_retention_seconds
        self.housekeeping_seconds = housekeeping_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Rows commits handed over, in commit order; a full flush is due (at start: unknown backlog).
        self._ready: list[Staged] = []
        self._flush_due = True
        self._next_flush_at = 0.0
        # Rows the last flush published: a commit may hand one over while that flush read it.
        self._flushed: set[int] = set()
        # Handed-over rows published and not yet marked sent.
        self._unmarked: list[int] = []
        self._mark_wake = asyncio.Event()
        self._marking = asyncio.Lock()

    def wake(self, bind: Any = None, rows: Sequence[Staged] = ()) -> None:
        """A commit staged events (thread-safe: commits may happen in worker threads). `rows`, when
        the commit was on this relay's database (`bind`), are published as they are; a commit
        elsewhere (another engine, perhaps on the same database) asks for a flush."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._take, bind, list(rows))

    def _take(self, bind: Any, rows: list[Staged]) -> None:
        if bind is self.db.engine.sync_engine:
            if not rows:
                return  # everything it staged was rolled back with a savepoint
            self._ready.extend(rows)
        else:
            self._flush_due = True
        self._wake.set()

    async def run(self) -> None:
        """Publish what commits hand over as they come, flush on start, after a failure and every
        `poll_seconds`."""
        self._loop = asyncio.get_running_loop()
        _commit_listeners.append(self.wake)
        # Beside the relay, not in its loop: a long prune never delays publishing, and the backlog
        # is measured while NATS is unreachable too (that is when it grows).
        housekeeping = asyncio.create_task(self._housekeeping(), name="outbox-housekeeping")
        marker = asyncio.create_task(self._mark_published_rows(), name="outbox-marker")
        try:
            while not self._stopping:
                failed = False
                try:
                    await self._relay_once()
                except (nats.errors.Error, OSError) as exc:
                    failed = True
                    log.warning("outbox relay could not publish; will retry", extra={"error": str(exc)})
                except Exception:
                    failed = True
                    log.exception("outbox relay failed; will retry")
                pause = max(0.0, self._next_flush_at - asyncio.get_running_loop().time())
                if failed:
                    self._flush_due = True  # what did not go out is read back, oldest first
                    # Not straight back at it: the next round comes with a commit or after the pause.
                    pause = max(pause, RETRY_PAUSE_SECONDS)
                elif self._ready or self._flush_due:
                    continue  # handed over while this round was publishing
                try:
                    await asyncio.wait_for(self._wake.wait(), pause)
                except TimeoutError:
                    pass
                self._wake.clear()
        finally:
            _commit_listeners.remove(self.wake)
            for task in (housekeeping, marker):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._mark_unmarked()
            # This pod stops measuring: its last values must not outlive it in the collector (for
            # its metric expiry) and hold the backlog alert up; the other pods measure on.
            outbox_pending.set(0)
            outbox_oldest_pending_age.set(0)

    async def _relay_once(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._flush_due or now >= self._next_flush_at:
            # The flush reads back every committed row, the handed-over ones too.
            self._ready.clear()
            self._flushed.clear()
            self._next_flush_at = now + self.poll_seconds
            self._flush_due = True
            await self.flush()
            self._flush_due = False
        elif self._ready:
            rows = [row for row in self._ready if row.id not in self._flushed]
            self._ready = []
            if rows:
                await self.publish_committed(rows)

    async def publish_committed(self, rows: Sequence[Staged]) -> None:
        """Publish rows known to be committed, in the order given. They are marked sent beside
        what goes out next (those another relay marked meanwhile are left as they are)."""
        async with self._lock:
            await self._publish_all(rows)
        self._unmarked.extend(row.id for row in rows)
        self._mark_wake.set()

    async def _mark_published_rows(self) -> None:
        """Mark handed-over rows sent as they are published, many in one UPDATE when they come fast."""
        while True:
            await self._mark_wake.wait()
            self._mark_wake.clear()
            await self._mark_unmarked()

    async def _mark_unmarked(self) -> None:
        async with self._marking:
            ids, self._unmarked = self._unmarked, []
            if not ids:
                return
            try:
                await self._mark_all_sent(ids)
            except Exception as exc:
                # They stay pending in the outbox: the flush this asks for sends them again, and
                # JetStream drops those copies as duplicates.
                log.warning("outbox relay could not mark rows sent; will flush", extra={"error": str(exc)})
                self._flush_due = True
                self._wake.set()

    async def _mark_all_sent(self, ids: list[int]) -> None:
        params = {"ids": ids, "now": utcnow()}
        if self.db.is_sqlite:
            async with self.db.engine.begin() as conn:  # SQLite's writers queue on BEGIN IMMEDIATE
                await conn.execute(_MARK_SENT, params)
            return
        # One statement on its own, on the driver's connection: without BEGIN and COMMIT it is one
        # round trip instead of three, and without SQLAlchemy's work around it (an autocommit
        # connection, the expanding IN list compiled per count of rows) about half the CPU.
        await self.db.fetch("UPDATE kit_outbox", _MARK_SENT_PG, ids, params["now"])

    async def _housekeeping(self) -> None:
        """Every `housekeeping_seconds` (with jitter, so replicas spread out; the first round a
        random part of it after start): measure the backlog, prune what is past its retention. A
        round that stopped at its bound goes on a second later, so a large backlog of old rows
        drains at the bound per second rather than per interval. A failure is logged and tried
        again next round."""
        await asyncio.sleep(self.housekeeping_seconds * random.uniform(0.1, 1.0))  # noqa: S311
        while True:
            more = False
            try:
                more = await self.housekeep()
            except Exception:
                log.exception("outbox housekeeping failed; will retry")
            pause = 1.0 if more else self.housekeeping_seconds * random.uniform(0.75, 1.25)  # noqa: S311
            await asyncio.sleep(pause)

    async def housekeep(self) -> bool:
        """One round: record the backlog gauges, then prune both tables; returns whether a prune
        stopped at its bound (more rows are due)."""
        backlog = await outbox_backlog(self.db)
        outbox_pending.set(backlog.pending)
        outbox_oldest_pending_age.set(backlog.oldest_age_seconds)
        now, bound = utcnow(), PRUNE_BATCH_SIZE * PRUNE_MAX_BATCHES
        more = False
        if self.outbox_retention_seconds > 0:
            more |= await prune_outbox(self.db, now - timedelta(seconds=self.outbox_retention_seconds)) >= bound
        if self.inbox_retention_seconds > 0:
            more |= await prune_inbox(self.db, now - timedelta(seconds=self.inbox_retention_seconds)) >= bound
        return more

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def flush(self) -> int:
        """Publish every pending row; returns how many were published."""
        total = 0
        async with self._lock:
            await self._mark_unmarked()
            while True:
                sent = await self._flush_batch()
                total += sent
                if sent < self.batch_size:
                    return total

    async def _flush_batch(self) -> int:
        query = (
            select(OutboxMessage)
            .where(col(OutboxMessage.sent_at).is_(None))
            .order_by(col(OutboxMessage.id))
            .limit(self.batch_size)
        )
        if self.db.is_sqlite:
            # Every SQLite transaction holds the database's one write lock (BEGIN IMMEDIATE), and
            # publishing waits up to PUBLISH_TIMEOUT_SECONDS for JetStream: held across it while
            # NATS is away, every write of the service would queue behind the retries and fail as
            # "database is locked". One relay per database file: read, let go, publish, mark.
            async with self.db.transaction() as session:
                rows = list((await session.exec(query)).all())
            if rows:
                await self._publish_all(rows)
                await self._mark_all_sent([row.id for row in rows if row.id is not None])
        else:
            async with self.db.transaction() as session:
                # Several replicas may relay at once; each row goes to exactly one of them.
                rows = list((await session.exec(query.with_for_update(skip_locked=True))).all())
                if rows:
                    await self._publish_all(rows)
                    await self._mark_sent(session, rows)
        for row in rows:
            if row.id is not None and len(self._flushed) < FLUSHED_IDS_KEPT:
                self._flushed.add(row.id)
        return len(rows)

    async def _publish_all(self, rows: Sequence[OutboxMessage | Staged]) -> None:
        """Send `rows` in order, then wait until JetStream has acknowledged each of them (raises
        if it refused one or did not answer within PUBLISH_TIMEOUT_SECONDS)."""
        acks: list[asyncio.Future[Any]] = []
        try:
            for row in rows:
                acks.append(await self._send(row))
            await asyncio.wait_for(asyncio.gather(*acks), PUBLISH_TIMEOUT_SECONDS)
        finally:
            for ack in acks:
                ack.cancel()  # no-op once answered; frees JetStream's slot for one that never is

    async def _send(self, row: OutboxMessage | Staged) -> asyncio.Future[Any]:
        """Send one row; the returned future is its acknowledgement. Its producer span ends then.

        While nothing is exported there is no producer span: the row goes with the trace context
        it was staged in, so the consumer continues the same trace from the span that published
        it. Reading that context, starting a span the sampler drops and writing its ids back cost
        a third of the relay's time per event (bench/README.md)."""
        headers = dict(row.headers)
        headers["ce-source"] = self.source
        if not exporting():
            ack = await self.js.publish_async(row.subject, row.payload, headers=headers)
            ack.add_done_callback(functools.partial(_count_published, row.subject))
            return ack
        span = tracer.start_span(
            f"{row.subject} publish",
            context=extract_context(headers),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": row.subject,
                "messaging.message.id": row.event_id,
                "messaging.operation.type": "publish",
            },
        )
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                # The consumer continues the trace from this producer span.
                headers.pop("traceparent", None)
                headers.pop("tracestate", None)
                inject_headers(headers)
                ack = await self.js.publish_async(row.subject, row.payload, headers=headers)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.end()
            raise

        def acknowledged(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                span.set_status(Status(StatusCode.ERROR, "not acknowledged"))
            _count_published(row.subject, done)
            span.end()

        ack.add_done_callback(acknowledged)
        return ack

    async def _mark_sent(self, session: AsyncSession, rows: Sequence[OutboxMessage]) -> None:
        await session.exec(
            update(OutboxMessage)
            .where(col(OutboxMessage.id).in_([row.id for row in rows]))
            .values(sent_at=utcnow())
            .execution_options(synchronize_session=False)
        )

    async def pending(self) -> int:
        """How many rows wait to be published."""
        return (await outbox_backlog(self.db)).pending


@dataclass(frozen=True)
class Backlog:
    """Outbox rows not yet published: how many (capped at BACKLOG_COUNT_CAP), and how old the
    oldest is (0 when there is none)."""

    pending: int
    oldest_age_seconds: float


async def outbox_backlog(db: Database) -> Backlog:
    """Measure the outbox backlog (both queries use the index on `sent_at`)."""
    unsent = col(OutboxMessage.sent_at).is_(None)
    async with db.sessions() as session:
        capped = select(OutboxMessage.id).where(unsent).limit(BACKLOG_COUNT_CAP).subquery()
        pending = (await session.exec(select(func.count()).select_from(capped))).one()
        oldest = (await session.exec(select(func.min(OutboxMessage.created_at)).where(unsent))).one()
    age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0
    return Backlog(int(pending), age)


async def prune_outbox(
    db: Database,
    older_than: datetime,
    *,
    batch_size: int = PRUNE_BATCH_SIZE,
    max_batches: int = PRUNE_MAX_BATCHES,
) -> int:
    """Delete outbox rows published before `older_than`, oldest first, `batch_size` per
    transaction and at most `max_batches` batches (the next round continues); returns how many.
    Unpublished rows are never touched."""
    sent_at = col(OutboxMessage.sent_at)
    condition = and_(sent_at.is_not(None), sent_at < older_than)
    total, _ = await _prune(
        db, OutboxMessage, col(OutboxMessage.id), condition, sent_at, batch_size=batch_size, max_batches=max_batches
    )
    if total:
        rows_pruned.add(total, {"table": "kit_outbox"})
        log.info("pruned published outbox rows", extra={"rows": total, "older_than": older_than.isoformat()})
    return total


async def _prune(
    db: Database,
    model: type[SQLModel],
    key: Mapped[Any],
    condition: ColumnElement[bool],
    order_by: Mapped[Any],
    *,
    batch_size: int,
    max_batches: int,
) -> tuple[int, int]:
    """Delete `model`'s rows that meet `condition`, in `order_by` order, `batch_size` per
    transaction and at most `max_batches` batches; returns (rows, batches).

    Each batch's keys are read first, then its rows deleted by key: PostgreSQL may evaluate a
    LIMIT subquery inside the DELETE more than once and delete more than one batch. Replicas
    pruning at once take different rows (`SKIP LOCKED`) instead of waiting on each other's."""
    total, batches = 0, 0
    while batches < max_batches:
        batches += 1
        batch = select(key).where(condition).order_by(order_by).limit(batch_size)
        if not db.is_sqlite:
            batch = batch.with_for_update(skip_locked=True)
        async with db.transaction() as session:
            keys = list((await session.exec(batch)).all())
            if keys:
                await session.exec(
                    delete(model).where(condition, key.in_(keys)).execution_options(synchronize_session=False)
                )
        total += len(keys)
        if len(keys) < batch_size:
            break
    return total, batches


# The inbox's consumers, from its primary key's index without reading every row (a loose index
# scan: each step asks for the next name above the last).
_INBOX_CONSUMERS = text(
    "WITH RECURSIVE c(name) AS ("
    " SELECT MIN(consumer) FROM kit_inbox"
    " UNION ALL"
    " SELECT (SELECT MIN(consumer) FROM kit_inbox WHERE consumer > c.name) FROM c WHERE c.name IS NOT NULL"
    ") SELECT name FROM c WHERE name IS NOT NULL"
)


def event_id_bound(moment: datetime) -> str:
    """The smallest event id (`evt_` + ULID) a moment at or after `moment` could have: every id of
    an event created earlier sorts below it, since a ULID starts with its millisecond timestamp
    in an alphabet that sorts like the numbers it encodes."""
    return f"evt_{str(ULID.from_datetime(moment))[:10]}"


async def prune_inbox(
    db: Database,
    older_than: datetime,
    *,
    batch_size: int = PRUNE_BATCH_SIZE,
    max_batches: int = PRUNE_MAX_BATCHES,
) -> int:
    """Delete inbox rows processed before `older_than`, per consumer, `batch_size` per
    transaction and at most `max_batches` batches in all; returns how many.

    The inbox has no index on `processed_at`; its primary key (consumer, event_id) serves instead:
    event ids begin with their creation time, and an event is processed after it is created, so
    every row to delete has an id below `event_id_bound(older_than)`. `processed_at` still decides
    (an event created long ago but processed recently stays). Ids of another shape (an event
    published without the kit) are kept.
    """
    bound = event_id_bound(older_than)
    async with db.engine.connect() as conn:
        consumers = [str(row[0]) for row in (await conn.execute(_INBOX_CONSUMERS)).all()]
    event_id = col(InboxMessage.event_id)
    total, batches = 0, 0
    for consumer in consumers:
        if batches >= max_batches:
            break
        condition = and_(
            col(InboxMessage.consumer) == consumer,
            event_id >= "evt_",
            event_id < bound,
            col(InboxMessage.processed_at) < older_than,
        )
        # One consumer's rows: the event id is the rest of the key.
        rows, used = await _prune(
            db, InboxMessage, event_id, condition, event_id, batch_size=batch_size, max_batches=max_batches - batches
        )
        total, batches = total + rows, batches + used
    if total:
        rows_pruned.add(total, {"table": "kit_inbox"})
        log.info("pruned inbox rows", extra={"rows": total, "older_than": older_than.isoformat()})
    return total


M = TypeVar("M", bound=ProtoMessage)


@dataclass(frozen=True)
class Event:
    """An event as a handler sees it: CloudEvents attributes plus the protobuf payload."""

    id: str
    subject: str
    event_type: str
    source: str
    member_id: str | None
    time: str
    data: bytes
    headers: dict[str, str]
    delivery: int = 1

    @property
    def owner(self) -> str:
        """The service that published it, as the broker enforces: a service publishes only under
        its own name, so the subject's first token (and the stream it came from) names it.
        (`source`, the `ce-source` header, is informational: anyone may write any header.)"""
        return self.subject.split(".", 1)[0]

    def parse(self, message_type: type[M]) -> M:
        """Decode the payload as `message_type`; InvalidArgument when it is not one, or carries
        text no database can store (NUL): such an event never succeeds, so it is dead-lettered
        at once instead of retried."""
        message = message_type()
        try:
            message.ParseFromString(self.data)
        except DecodeError as exc:
            raise InvalidArgument(f"the payload is not a {message_type.DESCRIPTOR.full_name}") from exc
        check_message(message)
        return message

    @classmethod
    def from_msg(cls, msg: Msg) -> Event:
        headers = dict(msg.headers or {})
        meta = msg.metadata
        fallback_id = f"{meta.stream}:{meta.sequence.stream}"
        return cls(
            id=headers.get("ce-id") or headers.get("Nats-Msg-Id") or fallback_id,
            subject=msg.subject,
            event_type=headers.get("ce-type", f"kizuna.{msg.subject}"),
            source=headers.get("ce-source", ""),
            member_id=headers.get("ce-subject"),
            time=headers.get("ce-time", ""),
            data=msg.data,
            headers=headers,
            delivery=meta.num_delivered,
        )


def command_sender(event: Event, command: str) -> str | None:
    """The service that sent a command (`<command>.<sender>`, e.g. `points.credit.requested.shop`),
    or None when the subject is not that command: the broker lets a service publish a command
    only with its own name as the last token."""
    prefix = f"{command}."
    if not event.subject.startswith(prefix):
        return None
    sender = event.subject[len(prefix) :]
    return sender if sender and "." not in sender else None


Handler = Callable[[AsyncSession, Event], Awaitable[None]]


def durable_name(service: str, purpose: str) -> str:
    """A durable consumer's name, `<service>-<purpose>` (`points-members`). The service's NATS user
    may use exactly the names its declaration implies (kizuna.kit.natsauth), built by this."""
    return f"{service}-{purpose}"


@dataclass(frozen=True)
class Consumer:
    """A durable pull consumer: `name` follows `<service>-<purpose>`, e.g. `points-shop-earn`.

    `handler(session, event)` runs inside the transaction that also records the event in the
    inbox; anything it writes (including events it publishes) commits with it, or not at all.

    `concurrency` events are handled at once, each in its own transaction, when the handler allows
    it: events of one member (`ce-subject`) still run one after another in delivery order, and so
    do all events without a member. 1 (the default) handles one event at a time.
    """

    name: str
    subjects: Sequence[str]
    handler: Handler
    max_deliver: int | None = None
    ack_wait_seconds: float = 30.0
    retry_delay_seconds: float = 1.0
    batch_size: int = 16
    concurrency: int = 1

    @property
    def stream(self) -> str:
        streams = {stream_name_for(s) for s in self.subjects}
        if len(streams) != 1:
            raise ValueError(f"consumer {self.name}: subjects span several streams: {sorted(streams)}")
        return streams.pop()


@dataclass
class _Outcome:
    status: str  # "done" | "duplicate" | "failed"
    error: BaseException | None = None


class _Duplicate(Exception):
    """The inbox already holds the event: its effect was committed by an earlier delivery."""


class UndeclaredConsumer(RuntimeError):
    """A durable consumer NATS would not let the service create or use (see ConsumerWorker.subscribe)."""


class JetStreamNotAnswering(RuntimeError):
    """NATS did not answer a JetStream request the service may make either: it is down, starting
    or overloaded (see ConsumerWorker.subscribe)."""


@dataclass
class ConsumerWorker:
    """Runs one `Consumer` against JetStream and the service database."""

    consumer: Consumer
    db: Database
    js: JetStreamContext
    default_max_deliver: int = 5
    stream_replicas: int = 1
    # The service running it (dead letters go to `deadletter.<service>.<consumer>`); by default the
    # consumer name's first part, as names follow `<service>-<purpose>`.
    service: str = ""
    # The DEADLETTER stream's limits, set by whichever consumer creates it (no service may change
    # it afterwards: the operators' user does, deploy/README.md "Events").
    dead_letter_limits: StreamLimits = DEAD_LETTER_LIMITS
    _stopping: bool = field(default=False, init=False)
    _sub: Any = field(default=None, init=False)
    # Messages fetched and not yet finished, queued per ordering key (the head is next or being
    # handled); at most `concurrency` of them are being handled.
    _lanes: dict[str, collections.deque[Msg]] = field(default_factory=dict, init=False)
    _in_hand: int = field(default=0, init=False)
    _room: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _lane_tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _handling: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._handling = asyncio.Semaphore(self.concurrency)

    @property
    def service_name(self) -> str:
        return self.service or self.consumer.name.split("-", 1)[0]

    @property
    def max_deliver(self) -> int:
        return self.consumer.max_deliver or self.default_max_deliver

    @property
    def concurrency(self) -> int:
        # SQLite takes one writer at a time: handlers side by side would only queue on its lock.
        return 1 if self.db.is_sqlite else max(1, self.consumer.concurrency)

    async def subscribe(self) -> None:
        """Create (or bind to) the durable consumer; its stream is created if its producer is not up yet.

        The broker answers a request the service's declaration does not allow with silence, as it
        would if it were down or overloaded. So when NATS does not answer, the service asks it for
        its JetStream account information, which every service may: answered, the silence was a
        refusal (UndeclaredConsumer, naming what to declare); not answered either, NATS itself is
        not answering (JetStreamNotAnswering)."""
        try:
            await self._subscribe()
        except nats.errors.TimeoutError as exc:
            c = self.consumer
            if not await self._jetstream_answers():
                raise JetStreamNotAnswering(
                    f"durable consumer {c.name!r} on stream {c.stream}: NATS JetStream did not answer, nor "
                    f"did it answer a request for its account information: it is down, starting or "
                    f"overloaded (check the NATS servers and their JetStream state)"
                ) from exc
            service = self.service_name
            purpose = c.name.removeprefix(f"{service}-")
            raise UndeclaredConsumer(
                f"durable consumer {c.name!r} on stream {c.stream}: NATS answers this service but refused it. "
                f"The broker lets a service use only the durable consumers its declaration names and answers "
                f"any other with silence (its log says 'permissions violation'): declare it in {service}'s "
                f'service.toml, [events] consumers = {{ {purpose} = "{c.stream.lower()}" }}.'
            ) from exc

    async def _jetstream_answers(self) -> bool:
        try:
            await self.js.account_info()
        except (nats.errors.Error, nats.js.errors.Error):  # a timeout, no responders, a closed connection
            return False
        return True

    async def _subscribe(self) -> None:
        c = self.consumer
        await ensure_stream(
            self.js, c.stream, replicas=self.stream_replicas, owner=c.stream == self.service_name.upper()
        )
        # Created up front, with its limits, so that it exists (and is measured) before the first
        # dead letter.
        await self._ensure_dead_letter_stream()
        config = ConsumerConfig(
            durable_name=c.name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=c.ack_wait_seconds,
            # Our own dead-lettering decides at max_deliver; the server's limit is a backstop
            # for a message that crashes the process before it can be dead-lettered.
            max_deliver=self.max_deliver + 2,
            filter_subjects=list(c.subjects) if len(c.subjects) > 1 else None,
            filter_subject=c.subjects[0] if len(c.subjects) == 1 else None,
        )
        await self._follow_subject_changes(config)
        self._sub = await self.js.pull_subscribe(c.subjects[0], durable=c.name, stream=c.stream, config=config)

    async def _follow_subject_changes(self, config: ConsumerConfig) -> None:
        """A durable consumer created with other subjects (an older release) is updated in place,
        keeping its position; binding to it as it is would silently read the old subjects."""
        c = self.consumer
        try:
            info = await self.js.consumer_info(c.stream, c.name)
        except nats.js.errors.NotFoundError:
            return
        current = sorted(
            info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else [])
        )
        if current == sorted(c.subjects):
            return
        log.info(
            "consumer subjects changed; updating it",
            extra={"consumer": c.name, "from": current, "to": list(c.subjects)},
        )
        await self.js.add_consumer(c.stream, config.evolve(name=c.name))

    async def run(self) -> None:
        """Fetch and process until stopped; the messages in hand are finished before returning.

        The next fetch waits on the server while handlers run (up to `batch_size`, or `concurrency`
        if more, in hand at once), so an event arriving meanwhile is taken at once."""
        if self._sub is None:
            await self.subscribe()
        most_in_hand = max(self.concurrency, self.consumer.batch_size)
        try:
            while not self._stopping:
                room = most_in_hand - self._in_hand
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()
                    continue
                try:
                    # One at a time: a fetch for several that finds none waiting holds the first
                    # to arrive until the next one does (200 ms between events at 5/s in
                    # bench/earning_bench.py: the first events after an idle spell, and any that
                    # came while others were in hand). Taking one returns it as it arrives; a
                    # backlog costs a pull request per event, small beside handling it.
                    msgs = await self._sub.fetch(1, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    log.warning("fetch failed; retrying", extra={"consumer": self.consumer.name, "error": str(exc)})
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    self._dispatch(msg)
        except asyncio.CancelledError:
            # Cancelled while handling (not drained first): those transactions roll back, and their
            # messages, never acked, come back after ack_wait.
            for task in list(self._lane_tasks):
                task.cancel()
            raise
        await self.drain()

    def _dispatch(self, msg: Msg) -> None:
        """Queue `msg` behind the messages in hand with the same ordering key, starting its lane."""
        self._in_hand += 1
        key = (msg.headers or {}).get("ce-subject", "") if self.concurrency > 1 else ""
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(msg)
            return
        self._lanes[key] = collections.deque([msg])
        task = asyncio.create_task(self._run_lane(key), name=f"consumer:{self.consumer.name}:lane")
        self._lane_tasks.add(task)
        task.add_done_callback(self._lane_tasks.discard)

    async def _run_lane(self, key: str) -> None:
        lane = self._lanes[key]
        try:
            while lane:
                msg = lane[0]
                try:
                    async with self._handling:
                        if self._stopping:
                            # Not started: back to the server at once, for another replica or the
                            # next start.
                            await msg.nak()
                        else:
                            await self.handle(msg)
                except Exception:
                    # Only the ack/nak can fail here (handle() turns handler failures into outcomes):
                    # the message comes back after ack_wait, and its inbox row makes that harmless.
                    log.exception("could not settle a message", extra={"consumer": self.consumer.name})
                lane.popleft()
                self._in_hand -= 1
                self._room.set()
        finally:
            self._in_hand -= len(lane)
            del self._lanes[key]
            self._room.set()

    def stop(self) -> None:
        """Stop fetching; the messages being handled complete, those queued behind them are returned
        to the server (nak) unhandled."""
        self._stopping = True
        self._room.set()

    async def drain(self) -> None:
        """Wait for the messages in hand to finish."""
        while self._lane_tasks:
            await asyncio.gather(*self._lane_tasks, return_exceptions=True)

    async def close(self) -> None:
        """Drop the subscription (the durable consumer stays on the server for the next start)."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    async def handle(self, msg: Msg) -> None:
        """Process one delivery, then ack, retry later, or dead-letter it."""
        outcome = await self.process(msg)
        if outcome.status in ("done", "duplicate"):
            # Sent without waiting for the server to confirm it (as `ack_sync` would): an ack that
            # is lost only brings the event back after ack_wait, and its inbox row, committed
            # before the ack, makes that delivery a no-op.
            await msg.ack()
            return
        delivered = msg.metadata.num_delivered
        if delivered >= self.max_deliver or isinstance(outcome.error, InvalidArgument):
            await self._dead_letter(msg, outcome.error)
            await msg.term()
        else:
            await msg.nak(delay=self.consumer.retry_delay_seconds * delivered)

    async def process(self, msg: Msg) -> _Outcome:
        """Apply the handler and record the inbox row in one transaction; never acks."""
        event = Event.from_msg(msg)
        name = self.consumer.name
        with tracer.start_as_current_span(
            f"{msg.subject} process",
            context=extract_context(event.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": name,
                "messaging.message.id": event.id,
                "messaging.operation.type": "process",
                **({"user.id": event.member_id} if event.member_id else {}),
            },
        ) as span:
            try:
                async with self.db.transaction() as session:
                    # Recorded first: a delivery of an event already handled (committed) stops here,
                    # and one still being handled by another delivery waits for it on the key.
                    recorded = await self._record_inbox.fetch(
                        session,
                        {"consumer": name, "event_id": event.id, "subject": msg.subject, "processed_at": utcnow()},
                    )
                    if not recorded:
                        raise _Duplicate
                    await self.consumer.handler(session, event)
            except _Duplicate:
                span.set_attribute("kizuna.duplicate", True)
                messages_consumed.add(1, {"consumer": name, "outcome": "duplicate"})
                return _Outcome("duplicate")
            except Exception as exc:
                log.exception(
                    "event handler failed",
                    extra={"consumer": name, "event_id": event.id, "delivery": event.delivery},
                )
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                messages_consumed.add(1, {"consumer": name, "outcome": "failed"})
                return _Outcome("failed", exc)
        messages_consumed.add(1, {"consumer": name, "outcome": "done"})
        return _Outcome("done")

    @functools.cached_property
    def _record_inbox(self) -> OnDriver:
        """INSERT of the inbox row that does nothing (and returns no row) when it is there already;
        built once, its values passed as parameters (a statement built per event costs its
        construction and a fresh cache key every time). The transaction's first statement: on
        PostgreSQL it begins it."""
        insert = sqlite_insert if self.db.is_sqlite else pg_insert
        statement = (
            insert(InboxMessage)
            .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
            .returning(col(InboxMessage.event_id))
        )
        return OnDriver(statement, "INSERT kit_inbox")

    async def _ensure_dead_letter_stream(self) -> None:
        limits = self.dead_letter_limits
        await ensure_stream(
            self.js,
            DEAD_LETTER_STREAM,
            replicas=self.stream_replicas,
            owner=False,
            max_age_seconds=limits.max_age_seconds,
            max_bytes=limits.max_bytes,
            max_msgs=limits.max_msgs,
        )

    async def _dead_letter(self, msg: Msg, error: BaseException | None) -> None:
        headers = dict(msg.headers or {})
        headers.pop("Nats-Msg-Id", None)
        headers["kizuna-original-subject"] = msg.subject
        headers["kizuna-consumer"] = self.consumer.name
        headers["kizuna-deliveries"] = str(msg.metadata.num_delivered)
        headers["kizuna-error"] = (repr(error) if error else "unknown error")[:500]
        subject = f"{DEAD_LETTER_PREFIX}.{self.service_name}.{self.consumer.name}"
        await self._ensure_dead_letter_stream()
        await self.js.publish(subject, msg.data, headers=headers)
        dead_letters.add(1, {"consumer": self.consumer.name})
        log.error(
            "event moved to dead-letter subject",
            extra={"consumer": self.consumer.name, "subject": subject, "event_id": headers.get("ce-id")},
        )
