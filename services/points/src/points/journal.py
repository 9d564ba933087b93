"""The journal: balanced entries and their postings, applied to the member's balance rows in the
same transaction; the tables and the helpers every ledger module shares."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.points.v1 import points_pb2 as pb
from sqlalchemy import ARRAY, BigInteger, Boolean, String, TextClause, bindparam, insert, text
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
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


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


def _entry_statement_pg(with_lot: bool) -> TextClause:
    """PostgreSQL: the entry, its postings (in the order given) and a credit's lot in one round trip."""
    parts = [
        """WITH entry AS (
  INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service, source_ref, created_at)
  VALUES (:entry_id, :member_id, :kind, :amount, :explanation, :source_service, :source_ref, :created_at)
  RETURNING id
), postings AS (
  INSERT INTO points_posting (entry_pk, account, amount)
  SELECT entry.id, p.account, p.amount FROM entry,
    unnest(:accounts, :amounts) WITH ORDINALITY AS p(account, amount, n) ORDER BY p.n
)""",
        """, lot AS (
  INSERT INTO points_lot (member_id, entry_pk, kind, rolling, amount, remaining, clawed_back, expired,
    source_service, expires_at, created_at)
  SELECT :member_id, entry.id, :lot_kind, :lot_rolling, :lot_amount, :lot_remaining, 0, 0, :source_service,
    :lot_expires_at, :created_at FROM entry
)""",
        "SELECT id FROM entry",
    ]
    statement = text("\n".join(parts if with_lot else [parts[0], parts[2]]))
    typed = [
        bindparam("amount", type_=BigInteger()),
        bindparam("created_at", type_=ENTRIES.c.created_at.type),
        bindparam("accounts", type_=ARRAY(String())),
        bindparam("amounts", type_=ARRAY(BigInteger())),
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


_ENTRY_PG = _entry_statement_pg(False)
_ENTRY_AND_LOT_PG = _entry_statement_pg(True)


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
) -> Posted:
    """Write one balanced entry and apply its postings to the member's balance rows (and, for a
    credit, the lot it adds)."""
    postings = {account: amount for account, amount in postings.items() if amount != 0}
    if sum(postings.values()) != 0:
        raise AssertionError(f"unbalanced entry {kind}: {postings}")
    member = wallet.member_id
    wallet.available += postings.get(account_available(member), 0)
    wallet.held += postings.get(account_held(member), 0)
    wallet.debt -= postings.get(account_debt(member), 0)
    if min(wallet.available, wallet.held, wallet.debt) < 0:
        raise AssertionError(f"entry {kind} would make a balance negative: {postings}")
    member_change = sum(v for a, v in postings.items() if a.startswith(f"member:{member}:"))
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
        pk = (await conn.execute(_ENTRY_PG if lot is None else _ENTRY_AND_LOT_PG, values)).scalar_one()
    else:
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
