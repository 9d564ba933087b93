"""The journal: balanced entries and their postings, applied to the member's balance rows in the
same transaction; the tables and the helpers every ledger module shares."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.kit.clock import timestamp
from kizuna.kit.db import OnDriver, written
from kizuna.points.v1 import points_pb2 as pb
from sqlalchemy import ARRAY, BigInteger, Boolean, Integer, String, TextClause, bindparam, insert, text
from sqlalchemy import inspect as orm_state
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from points.ledger import LIMITED_TIME, REGULAR
from points.models import (
    Wallet,
    account_available,
    account_debt,
    account_held,
)

VISIBLE_KINDS = ("credit", "spend", "refund", "clawback", "expiry")
LOT_KIND = {REGULAR: pb.CREDIT_KIND_REGULAR, LIMITED_TIME: pb.CREDIT_KIND_LIMITED_TIME}
MAX_PAGE = 200


def ts(moment: datetime | None) -> Timestamp | None:
    """A message's time field, or None to leave it unset."""
    return None if moment is None else timestamp(moment)


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


LOTS = SQLModel.metadata.tables["points_lot"]
ENTRIES = SQLModel.metadata.tables["points_entry"]
POSTINGS = SQLModel.metadata.tables["points_posting"]
RESERVATIONS = SQLModel.metadata.tables["points_reservation"]
HOLDS = SQLModel.metadata.tables["points_hold"]
RECORDS = SQLModel.metadata.tables["points_idempotency"]
WALLETS = SQLModel.metadata.tables["points_wallet"]
PENDING = SQLModel.metadata.tables["points_pending_earn"]


_INSERT_ENTRY = insert(ENTRIES).returning(ENTRIES.c.id)
_INSERT_POSTING = insert(POSTINGS)
_INSERT_LOT = insert(LOTS)


class NewLot(NamedTuple):
    """The lot a credit adds beside its entry (member, service and time are the entry's)."""

    kind: str
    rolling: bool
    amount: int
    remaining: int
    expires_at: datetime


# The wallet's columns a ledger operation changes; PostgreSQL writes them in the entry's statement
# (the `w_` parameters below).
LEDGER_COLUMNS = (
    "available",
    "held",
    "debt",
    "limited_time",
    "rolling_points",
    "earn_month",
    "earned_this_month",
    "last_earned_at",
    "rolling_expires_at",
)


_WALLET_COLUMN_SET = frozenset(LEDGER_COLUMNS)


async def flush_before_sql(session: AsyncSession, wallet: Wallet | None) -> None:
    """Flush what the ORM holds before statements of our own read or write the tables, unless all
    it holds is changes to the wallet's ledger columns, which none of those statements read: on
    PostgreSQL the entry's statement writes them (the flush at commit, where no entry follows or
    on SQLite), so no UPDATE of the wallet goes out ahead of it."""
    new, dirty, deleted = session.new, session.dirty, session.deleted  # each a set built when asked
    if not (new or dirty or deleted):
        return
    if wallet is not None and not (new or deleted) and len(dirty) == 1 and wallet in dirty:
        state = orm_state(wallet)
        if set(state.mapper.column_attrs.keys()) - state.unmodified <= _WALLET_COLUMN_SET:
            return
    await session.flush()


# PostgreSQL: a service's credits today so far (`used`), whether this credit's charge fits its
# daily budget (`fits`: one row, or none), and the charge, written only when it fits, on the shard of
# the member (`charged`). Bind parameters: service, day, shard, charge, budget. bounds.charge_budget
# runs it alone; a single credit runs it ahead of its entry, in the same statement.
CHARGE_CTES = """used AS (
  SELECT coalesce(sum(points), 0)::bigint AS points FROM points_daily_credit WHERE service = :service AND day = :day
), fits AS (
  SELECT 1 AS fit FROM used WHERE used.points + :charge <= :budget
), charged AS (
  INSERT INTO points_daily_credit (service, day, shard, points)
  SELECT :service, :day, :shard, :charge FROM fits
  ON CONFLICT (service, day, shard) DO UPDATE SET points = points_daily_credit.points + excluded.points
  RETURNING 1
)"""
CHARGE_PARAMS = (
    bindparam("charge", type_=BigInteger()),
    bindparam("budget", type_=BigInteger()),
    bindparam("shard", type_=Integer()),
)


class Charge(NamedTuple):
    """`charge` points counted against `service`'s daily `budget` on `day`, on the member's `shard`
    (bounds.charge_of); its fields are CHARGE_CTES's bind parameters."""

    service: str
    day: str
    shard: int
    charge: int
    budget: int


def _entry_statement_pg(with_lot: bool, charged: bool = False) -> TextClause:
    """PostgreSQL: the entry, its postings (in the order given), a credit's lot and the wallet's new
    balances in one round trip. `charged`: behind the budget's charge (CHARGE_CTES), written only
    if it fits; the statement then answers the entry's id (NULL when refused) and the service's
    credits so far today."""
    # Joined from constant pieces (no formatting): the values go in as bind parameters only.
    values = ":entry_id, :member_id, :kind, :amount, :explanation, :source_service, :source_ref, :created_at"
    head = "".join(("WITH ", *((CHARGE_CTES, ", ") if charged else ()), "entry AS ("))
    entry = """
  INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service, source_ref, created_at)
  """
    # Behind a charge: SELECT the values FROM fits, no row when the charge does not fit.
    source = "".join(("SELECT ", values, " FROM fits") if charged else ("VALUES (", values, ")"))
    rest = """
  RETURNING id
), postings AS (
  INSERT INTO points_posting (entry_pk, account, amount)
  SELECT entry.id, p.account, p.amount FROM entry,
    unnest(:accounts, :amounts) WITH ORDINALITY AS p(account, amount, n) ORDER BY p.n
), wallet AS (
  UPDATE points_wallet SET available = :w_available, held = :w_held, debt = :w_debt,
    limited_time = :w_limited_time, rolling_points = :w_rolling_points, earn_month = :w_earn_month,
    earned_this_month = :w_earned_this_month, last_earned_at = :w_last_earned_at,
    rolling_expires_at = :w_rolling_expires_at
  WHERE member_id = :member_id"""
    gate = " AND EXISTS (SELECT FROM entry)" if charged else ""
    lot = """
), lot AS (
  INSERT INTO points_lot (member_id, entry_pk, kind, rolling, amount, remaining, clawed_back, expired,
    source_service, expires_at, created_at)
  SELECT :member_id, entry.id, :lot_kind, :lot_rolling, :lot_amount, :lot_remaining, 0, 0, :source_service,
    :lot_expires_at, :created_at FROM entry"""
    answer = (
        "\n)\nSELECT (SELECT id FROM entry) AS id, (SELECT points FROM used) AS used"
        if charged
        else "\n)\nSELECT id FROM entry"
    )
    statement = text("".join((head, entry, source, rest, gate, *((lot,) if with_lot else ()), answer)))
    wallet_type = {c: WALLETS.c[c].type for c in LEDGER_COLUMNS}
    typed = [
        bindparam("amount", type_=BigInteger()),
        bindparam("created_at", type_=ENTRIES.c.created_at.type),
        bindparam("accounts", type_=ARRAY(String())),
        bindparam("amounts", type_=ARRAY(BigInteger())),
        *(bindparam(f"w_{c}", type_=wallet_type[c]) for c in LEDGER_COLUMNS),
        *(CHARGE_PARAMS if charged else ()),
    ]
    if with_lot:
        typed += [
            bindparam("lot_kind", type_=String()),
            bindparam("lot_rolling", type_=Boolean()),
            bindparam("lot_amount", type_=BigInteger()),
            bindparam("lot_remaining", type_=BigInteger()),
            bindparam("lot_expires_at", type_=LOTS.c.expires_at.type),
        ]
    return statement.bindparams(*typed)


_ENTRY_PG = OnDriver(_entry_statement_pg(False), "INSERT points_entry")
_ENTRY_AND_LOT_PG = OnDriver(_entry_statement_pg(True), "INSERT points_entry")
# A single credit's: its lot always (see crediting.credit).
_CHARGED_ENTRY_AND_LOT_PG = OnDriver(_entry_statement_pg(True, charged=True), "INSERT points_entry")


class NotCharged(Exception):
    """The entry was not written: its credit does not fit the service's daily budget (`used`: the
    service's credits so far today). Nothing of it was written; the caller rolls back what it
    changed before (in the database and, through the rollback, the wallet in memory)."""

    def __init__(self, used: int) -> None:
        super().__init__(used)
        self.used = used


def apply_postings(wallet: Wallet, kind: str, postings: dict[str, int]) -> tuple[dict[str, int], int]:
    """Apply a balanced entry's postings to the member's balances (in memory); the postings that
    move anything, and how much the member's own accounts change."""
    postings = {account: amount for account, amount in postings.items() if amount != 0}
    if sum(postings.values()) != 0:
        raise AssertionError(f"unbalanced entry {kind}: {postings}")
    member = wallet.member_id
    wallet.available += postings.get(account_available(member), 0)
    wallet.held += postings.get(account_held(member), 0)
    wallet.debt -= postings.get(account_debt(member), 0)
    if min(wallet.available, wallet.held, wallet.debt, wallet.limited_time, wallet.rolling_points) < 0:
        raise AssertionError(f"entry {kind} would make a balance negative: {postings}")
    if wallet.limited_time + wallet.rolling_points > wallet.available:
        raise AssertionError(f"entry {kind}: the wallet's limited-time and rolling points exceed its balance")
    return postings, sum(v for a, v in postings.items() if a.startswith(f"member:{member}:"))


async def post_entry(
    session: AsyncSession,
    wallet: Wallet,
    *,
    kind: str,
    postings: dict[str, int],
    explanation: str,
    source_service: str,
    source_ref: str,
    now: datetime,
    lot: NewLot | None = None,
    charge: Charge | None = None,
) -> Posted:
    """Write one balanced entry and apply its postings to the member's balance rows (and, for a
    credit, the lot it adds). `charge` (PostgreSQL, with a lot): the budget's charge (CHARGE_CTES),
    in the same statement; NotCharged when it does not fit."""
    postings, member_change = apply_postings(wallet, kind, postings)
    member = wallet.member_id
    entry_id = new_id("ent")
    conn = await session.connection()
    values = {
        "entry_id": entry_id,
        "member_id": member,
        "kind": kind,
        "amount": member_change,
        "explanation": explanation,
        "source_service": source_service,
        "source_ref": source_ref,
        "created_at": now,
    }
    if conn.dialect.name == "postgresql":
        values.update(accounts=list(postings), amounts=list(postings.values()))
        if lot is not None:
            values.update(
                lot_kind=lot.kind,
                lot_rolling=lot.rolling,
                lot_amount=lot.amount,
                lot_remaining=lot.remaining,
                lot_expires_at=lot.expires_at,
            )
        values.update({f"w_{c}": getattr(wallet, c) for c in LEDGER_COLUMNS})
        if charge is not None:
            if lot is None:
                raise ValueError("a charged entry is a credit's, with its lot")
            (row,) = await _CHARGED_ENTRY_AND_LOT_PG.fetch(session, values | charge._asdict())
            if row.id is None:
                raise NotCharged(row.used)
            pk = row.id
        else:
            ((pk,),) = await (_ENTRY_PG if lot is None else _ENTRY_AND_LOT_PG).fetch(session, values)
        # Written: the session's flush has no UPDATE of the wallet to make for these any more.
        written(wallet, LEDGER_COLUMNS)
    else:
        if charge is not None:
            raise ValueError("a charge in the entry's statement is PostgreSQL's (bounds.charge_budget elsewhere)")
        pk = (await conn.execute(_INSERT_ENTRY, values)).scalar_one()
        await conn.execute(_INSERT_POSTING, [{"entry_pk": pk, "account": a, "amount": v} for a, v in postings.items()])
        if lot is not None:
            await conn.execute(
                _INSERT_LOT,
                {
                    "member_id": member,
                    "entry_pk": pk,
                    "kind": lot.kind,
                    "rolling": lot.rolling,
                    "amount": lot.amount,
                    "remaining": lot.remaining,
                    "clawed_back": 0,
                    "expired": 0,
                    "source_service": source_service,
                    "expires_at": lot.expires_at,
                    "created_at": now,
                },
            )
        session.add(wallet)
    return Posted(pk, entry_id)


class Posted(NamedTuple):
    id: int
    entry_id: str


class PlannedEntry(NamedTuple):
    """An entry decided in memory (its postings applied to the wallet with `apply_postings`),
    written with others by `post_entries_pg`."""

    entry_id: str
    member_id: str
    kind: str
    amount: int
    explanation: str
    source_service: str
    source_ref: str
    created_at: datetime
    postings: dict[str, int]
    lot: NewLot | None


def _entries_statement_pg() -> TextClause:
    """PostgreSQL: many entries, their postings and lots (each in the order given) and the wallets'
    new balances in one statement, whatever the number of entries."""
    statement = text("""WITH e AS (
  INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service, source_ref, created_at)
  SELECT u.entry_id, u.member_id, u.kind, u.amount, u.explanation, u.source_service, u.source_ref, u.created_at
  FROM unnest(:entry_ids, :members, :kinds, :amounts, :explanations, :services, :refs, :created)
    WITH ORDINALITY AS u(entry_id, member_id, kind, amount, explanation, source_service, source_ref, created_at, n)
  ORDER BY u.n
  RETURNING id, entry_id, member_id, source_service, created_at
), postings AS (
  INSERT INTO points_posting (entry_pk, account, amount)
  SELECT e.id, p.account, p.amount
  FROM unnest(:p_entries, :p_accounts, :p_amounts) WITH ORDINALITY AS p(entry_id, account, amount, n)
  JOIN e ON e.entry_id = p.entry_id ORDER BY p.n
), lots AS (
  INSERT INTO points_lot (member_id, entry_pk, kind, rolling, amount, remaining, clawed_back, expired,
    source_service, expires_at, created_at)
  SELECT e.member_id, e.id, l.kind, l.rolling, l.amount, l.remaining, 0, 0, e.source_service, l.expires_at,
    e.created_at
  FROM unnest(:l_entries, :l_kinds, :l_rolling, :l_amounts, :l_remaining, :l_expires)
    WITH ORDINALITY AS l(entry_id, kind, rolling, amount, remaining, expires_at, n)
  JOIN e ON e.entry_id = l.entry_id
  ORDER BY l.n
), wallets AS (
  UPDATE points_wallet SET available = v.available, held = v.held, debt = v.debt,
    limited_time = v.limited_time, rolling_points = v.rolling_points, earn_month = v.earn_month,
    earned_this_month = v.earned_this_month, last_earned_at = v.last_earned_at,
    rolling_expires_at = v.rolling_expires_at
  FROM unnest(:w_members, :w_available, :w_held, :w_debt, :w_limited_time, :w_rolling_points, :w_earn_month,
    :w_earned_this_month, :w_last_earned_at, :w_rolling_expires_at)
    AS v(member_id, available, held, debt, limited_time, rolling_points, earn_month, earned_this_month,
      last_earned_at, rolling_expires_at)
  WHERE points_wallet.member_id = v.member_id
)
SELECT count(*) FROM e""")
    text_type, int_type, time_type = String(), BigInteger(), ENTRIES.c.created_at.type
    arrays: dict[str, Any] = {
        "entry_ids": text_type,
        "members": text_type,
        "kinds": text_type,
        "amounts": int_type,
        "explanations": text_type,
        "services": text_type,
        "refs": text_type,
        "created": time_type,
        "p_entries": text_type,
        "p_accounts": text_type,
        "p_amounts": int_type,
        "l_entries": text_type,
        "l_kinds": text_type,
        "l_rolling": Boolean(),
        "l_amounts": int_type,
        "l_remaining": int_type,
        "l_expires": time_type,
        "w_members": text_type,
        **{f"w_{c}": WALLETS.c[c].type for c in LEDGER_COLUMNS},
    }
    return statement.bindparams(*(bindparam(name, type_=ARRAY(item)) for name, item in arrays.items()))


_ENTRIES_PG = OnDriver(_entries_statement_pg(), "INSERT points_entry")


async def post_entries_pg(session: AsyncSession, entries: list[PlannedEntry], wallets: list[Wallet]) -> None:
    """Write planned entries (with their postings and lots) and the wallets' balances, on
    PostgreSQL, in one round trip. The wallets are a group's, in no session (`lock_wallets`): this
    statement is what writes them."""
    if not entries:
        return
    postings = [(e.entry_id, account, amount) for e in entries for account, amount in e.postings.items()]
    lots = [(e.entry_id, e.lot) for e in entries if e.lot is not None]
    values: dict[str, list[Any]] = {
        "entry_ids": [e.entry_id for e in entries],
        "members": [e.member_id for e in entries],
        "kinds": [e.kind for e in entries],
        "amounts": [e.amount for e in entries],
        "explanations": [e.explanation for e in entries],
        "services": [e.source_service for e in entries],
        "refs": [e.source_ref for e in entries],
        "created": [e.created_at for e in entries],
        "p_entries": [p[0] for p in postings],
        "p_accounts": [p[1] for p in postings],
        "p_amounts": [p[2] for p in postings],
        "l_entries": [entry_id for entry_id, _ in lots],
        "l_kinds": [lot.kind for _, lot in lots],
        "l_rolling": [lot.rolling for _, lot in lots],
        "l_amounts": [lot.amount for _, lot in lots],
        "l_remaining": [lot.remaining for _, lot in lots],
        "l_expires": [lot.expires_at for _, lot in lots],
        "w_members": [w.member_id for w in wallets],
        **{f"w_{c}": [getattr(w, c) for w in wallets] for c in LEDGER_COLUMNS},
    }
    ((count,),) = await _ENTRIES_PG.fetch(session, values)
    if count != len(entries):
        raise AssertionError(f"{count} of {len(entries)} entries written")
