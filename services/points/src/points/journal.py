"""The journal: balanced entries and their postings, applied to the member's balance rows in the
same transaction; the tables and the helpers every ledger module shares."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.points.v1 import points_pb2 as pb
from sqlalchemy import ARRAY, BigInteger, String, bindparam, insert, text
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
# PostgreSQL: the entry and its postings in one round trip, postings in the order given.
_INSERT_ENTRY_WITH_POSTINGS_PG = text("""
WITH entry AS (
  INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service, source_ref, created_at)
  VALUES (:entry_id, :member_id, :kind, :amount, :explanation, :source_service, :source_ref, :created_at)
  RETURNING id
), postings AS (
  INSERT INTO points_posting (entry_pk, account, amount)
  SELECT entry.id, p.account, p.amount FROM entry,
    unnest(:accounts, :amounts) WITH ORDINALITY AS p(account, amount, n) ORDER BY p.n
)
SELECT id FROM entry""").bindparams(
    bindparam("amount", type_=BigInteger()),
    bindparam("created_at", type_=ENTRIES.c.created_at.type),
    bindparam("accounts", type_=ARRAY(String())),
    bindparam("amounts", type_=ARRAY(BigInteger())),
)


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
) -> Posted:
    """Write one balanced entry and apply its postings to the member's balance rows."""
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
        pk = (await conn.execute(_INSERT_ENTRY_WITH_POSTINGS_PG, values)).scalar_one()
    else:
        pk = (await conn.execute(_INSERT_ENTRY, values)).scalar_one()
        await conn.execute(_INSERT_POSTING, [{"entry_pk": pk, "account": a, "amount": v} for a, v in postings.items()])
    session.add(wallet)
    return Posted(pk, entry_id)


class Posted(NamedTuple):
    id: int
    entry_id: str
