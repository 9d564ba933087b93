"""The money ledger: double-entry journal entries in integer minor units, never updated or deleted.

Each entry's postings sum to zero (positive debits, negative credits). Every account keeps a
balance in its normal direction (debits raise an asset, credits raise a liability) with an
optional floor: a member's bank account may not go below zero, whatever the concurrency, because
the account row is locked (`FOR UPDATE`; SQLite serializes writers) before it is moved.

Account names: `bank:<member>` (liability: the member's deposits), `card:<card id>` (asset: what
the member owes on the card), `merchant:<merchant id>` (liability: owed to the merchant),
`cash` (asset: money that came in from outside), `points:receivable` (asset: points redeemed, to
be settled by the points service), `suspense:payments` (liability: cash taken for a payment in
flight), `fund:<fund id>` (liability: what members paid for the units they still hold in a fund, at
cost), `realized:<fund id>` (asset: gains members realized selling a fund's units above their cost,
which the market paid; losses lower it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from kizuna.kit.db import one_moment
from kizuna.kit.errors import FailedPrecondition, InvalidArgument
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from fintech.models import Holding, LedgerAccount, LedgerEntry, LedgerPosting

ASSET, LIABILITY = "asset", "liability"
CASH = "cash"
POINTS_RECEIVABLE = "points:receivable"
SUSPENSE = "suspense:payments"


def bank_account(member_id: str) -> str:
    return f"bank:{member_id}"


def card_account(card_id: str) -> str:
    return f"card:{card_id}"


def merchant_account(merchant_id: str) -> str:
    return f"merchant:{merchant_id}"


def fund_account(fund_id: str) -> str:
    return f"fund:{fund_id}"


def realized_account(fund_id: str) -> str:
    return f"realized:{fund_id}"


def kind_of(account_id: str) -> str:
    """The normal direction of an account, from its name."""
    return ASSET if account_id.split(":", 1)[0] in ("cash", "card", "points", "realized") else LIABILITY


@dataclass(frozen=True)
class Posting:
    account_id: str
    amount_minor: int  # > 0 debit, < 0 credit


class InsufficientFunds(FailedPrecondition):
    """An account would go below its floor."""


def transfer(debit: str, credit: str, amount_minor: int) -> list[Posting]:
    """The two postings that move `amount_minor` from `credit`'s side to `debit`'s side."""
    return [Posting(debit, amount_minor), Posting(credit, -amount_minor)]


def check_balanced(postings: Sequence[Posting]) -> None:
    """An entry has postings, none of them zero, and they sum to zero."""
    if not postings:
        raise InvalidArgument("a ledger entry needs postings")
    if any(p.amount_minor == 0 for p in postings):
        raise InvalidArgument("a posting of zero moves nothing")
    if sum(p.amount_minor for p in postings) != 0:
        raise InvalidArgument("the postings of a ledger entry must sum to zero")


def natural_delta(account_id: str, signed: int) -> int:
    """How a signed posting changes the account's balance in its normal direction."""
    return signed if kind_of(account_id) == ASSET else -signed


def net_by_account(postings: Iterable[Posting]) -> dict[str, int]:
    net: dict[str, int] = defaultdict(int)
    for p in postings:
        net[p.account_id] += p.amount_minor
    return dict(net)


# ---- storage ------------------------------------------------------------------------------------


async def lock_accounts(
    session: AsyncSession, account_ids: Iterable[str], *, postgres: bool
) -> dict[str, LedgerAccount]:
    """Lock existing accounts in a fixed order (so that two transfers cannot deadlock)."""
    ids = sorted(set(account_ids))
    query = select(LedgerAccount).where(col(LedgerAccount.account_id).in_(ids)).order_by(col(LedgerAccount.account_id))
    if postgres:
        query = query.with_for_update()
    rows = (await session.exec(query.execution_options(populate_existing=True))).all()
    return {row.account_id: row for row in rows}


async def ensure_account(
    session: AsyncSession, account_id: str, currency: str, now: datetime, *, floor_minor: int | None = None
) -> None:
    """Create the account if it does not exist yet (idempotent, also under concurrency)."""
    values = {
        "account_id": account_id,
        "kind": kind_of(account_id),
        "currency": currency,
        "balance_minor": 0,
        "floor_minor": floor_minor,
        "created_at": now,
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    await session.exec(insert(LedgerAccount).values(**values).on_conflict_do_nothing())


async def post(
    session: AsyncSession,
    *,
    kind: str,
    ref: str,
    memo: str,
    currency: str,
    postings: Sequence[Posting],
    now: datetime,
    postgres: bool,
) -> str:
    """Write one balanced entry and move the balances of its accounts; returns the entry id.

    Raises `InsufficientFunds` (nothing written) if an account would go below its floor.
    """
    check_balanced(postings)
    net = net_by_account(postings)
    for account_id in net:
        await ensure_account(session, account_id, currency, now)
    accounts = await lock_accounts(session, net, postgres=postgres)
    for account_id, signed in net.items():
        account = accounts[account_id]
        if account.currency != currency:
            raise InvalidArgument(f"account {account_id} is in {account.currency}, not {currency}")
        after = account.balance_minor + natural_delta(account_id, signed)
        if account.floor_minor is not None and after < account.floor_minor:
            raise InsufficientFunds(
                f"insufficient funds: {account_id.split(':', 1)[0]} balance {account.balance_minor} {currency} "
                f"cannot cover {abs(signed)} {currency}"
            )
    entry_id = f"ent_{ULID()}"
    session.add(LedgerEntry(entry_id=entry_id, kind=kind, ref=ref, memo=memo, created_at=now))
    for p in postings:
        session.add(
            LedgerPosting(entry_id=entry_id, account_id=p.account_id, amount_minor=p.amount_minor, currency=currency)
        )
    for account_id, signed in net.items():
        accounts[account_id].balance_minor += natural_delta(account_id, signed)
        session.add(accounts[account_id])
    await session.flush()
    return entry_id


async def balance(session: AsyncSession, account_id: str) -> int:
    account = await session.get(LedgerAccount, account_id, populate_existing=True)
    return 0 if account is None else account.balance_minor


# ---- audit --------------------------------------------------------------------------------------


@dataclass
class AuditReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    entries: int = 0
    accounts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def audit(session: AsyncSession) -> AuditReport:
    """Check the books from the stored rows: every entry has postings in one currency that sum to
    zero; every account's balance equals the sum of its postings (in its normal direction), in its
    currency, and is not below its floor; every fund account equals the cost of the units held.

    Call it on a session that has not queried yet (`one_moment`; another is refused): on PostgreSQL
    every query then reads one snapshot, so a live system's transfer committing between two of them
    cannot look like a balance that does not match its postings."""
    await one_moment(session)
    problems: list[str] = []
    per_entry = (
        await session.exec(
            select(
                LedgerEntry.entry_id,
                func.count(col(LedgerPosting.id)),
                func.coalesce(func.sum(LedgerPosting.amount_minor), 0),
                func.count(func.distinct(LedgerPosting.currency)),
            )
            .outerjoin(LedgerPosting, col(LedgerPosting.entry_id) == LedgerEntry.entry_id)
            .group_by(col(LedgerEntry.entry_id))
        )
    ).all()
    for entry_id, postings, total, currencies in per_entry:
        if postings == 0:
            problems.append(f"entry {entry_id} has no postings")
        elif int(total) != 0:
            problems.append(f"entry {entry_id} sums to {int(total)}, not 0")
        if currencies > 1:
            problems.append(f"entry {entry_id} mixes {currencies} currencies")
    orphans = (
        await session.exec(
            select(LedgerPosting.entry_id)
            .outerjoin(LedgerEntry, col(LedgerEntry.entry_id) == LedgerPosting.entry_id)
            .where(col(LedgerEntry.entry_id).is_(None))
            .distinct()
        )
    ).all()
    problems += [f"postings refer to entry {entry_id}, which does not exist" for entry_id in orphans]

    posted = {
        (account_id, currency): int(total)
        for account_id, currency, total in (
            await session.exec(
                select(LedgerPosting.account_id, LedgerPosting.currency, func.sum(LedgerPosting.amount_minor)).group_by(
                    col(LedgerPosting.account_id), col(LedgerPosting.currency)
                )
            )
        ).all()
    }
    accounts = {a.account_id: a for a in (await session.exec(select(LedgerAccount))).all()}
    for account_id, currency in posted:
        account = accounts.get(account_id)
        if account is None:
            problems.append(f"postings move {account_id}, which has no account row")
        elif currency != account.currency:
            problems.append(f"{account_id} is in {account.currency} but has postings in {currency}")
    for account in accounts.values():
        if account.kind != kind_of(account.account_id):
            problems.append(f"{account.account_id} is kept as {account.kind}, not {kind_of(account.account_id)}")
        expected = natural_delta(account.account_id, posted.get((account.account_id, account.currency), 0))
        if account.balance_minor != expected:
            problems.append(
                f"{account.account_id} balance is {account.balance_minor} but its postings sum to {expected}"
            )
        if account.floor_minor is not None and account.balance_minor < account.floor_minor:
            problems.append(
                f"{account.account_id} is at {account.balance_minor}, below its floor {account.floor_minor}"
            )

    held_cost = dict(
        (await session.exec(select(Holding.fund_id, func.sum(Holding.cost_minor)).group_by(col(Holding.fund_id)))).all()
    )
    fund_ids = set(held_cost) | {a.split(":", 1)[1] for a in accounts if a.startswith("fund:")}
    for fund_id in sorted(fund_ids):
        cost = int(held_cost.get(fund_id, 0) or 0)
        booked = accounts[fund_account(fund_id)].balance_minor if fund_account(fund_id) in accounts else 0
        if booked != cost:
            problems.append(f"{fund_account(fund_id)} is {booked} but the units held in it cost {cost}")
    return AuditReport(not problems, problems, len(per_entry), len(accounts))
