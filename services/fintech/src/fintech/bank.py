"""The bank account: one per member, balance and history from the money ledger, a test top-up,
and transfers between members that are atomic and never overdraw (the floor of `bank:<member>`
is zero and its row is locked before it moves)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kizuna.identity.v1 import events_pb2 as identity_events
from kizuna.kit.errors import InvalidArgument, NotFound
from kizuna.kit.events import Consumer, Event, durable_name
from kizuna.kit.service import Runtime
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from fintech import ledger
from fintech.context import Fintech, fintech_of
from fintech.models import LedgerAccount, LedgerEntry, LedgerPosting
from fintech.money import positive_money


@dataclass(frozen=True)
class ToppedUp:
    entry_id: str
    amount_minor: int
    currency: str
    balance_minor: int  # after the top-up


@dataclass(frozen=True)
class Transferred:
    transfer_id: str
    amount_minor: int
    currency: str
    balance_minor: int  # the sender's, after the transfer


@dataclass(frozen=True)
class Movement:
    """One line of the account's history."""

    entry_id: str
    kind: str
    memo: str
    amount_minor: int  # positive money in, negative money out
    currency: str
    at: datetime


async def open_account(session: AsyncSession, ctx: Fintech, member_id: str) -> None:
    """Open the member's account if it is not open yet."""
    await ledger.ensure_account(
        session, ledger.bank_account(member_id), ctx.settings.currency, ctx.clock.now(), floor_minor=0
    )


def consumers(runtime: Runtime[Any]) -> list[Consumer]:
    """`fintech-member-accounts`: every member registered at identity gets a bank account
    (opening is idempotent, so a redelivery or a member who opened it first changes nothing)."""
    ctx = fintech_of(runtime)

    async def open_for_registered(session: AsyncSession, event: Event) -> None:
        registered = event.parse(identity_events.MemberRegistered)
        if not registered.member_id:
            raise InvalidArgument("identity.member.registered without a member_id")
        await open_account(session, ctx, registered.member_id)

    return [
        Consumer(
            name=durable_name("fintech", "member-accounts"),
            subjects=["identity.member.registered"],
            handler=open_for_registered,
        )
    ]


async def require_account(session: AsyncSession, member_id: str) -> LedgerAccount:
    account = await session.get(LedgerAccount, ledger.bank_account(member_id), populate_existing=True)
    if account is None:
        raise NotFound(f"member {member_id!r} has no bank account")
    return account


async def top_up(session: AsyncSession, ctx: Fintech, member_id: str, amount_minor: int, currency: str) -> ToppedUp:
    amount = positive_money(amount_minor, currency, expected=ctx.settings.currency)
    await require_account(session, member_id)
    entry_id = await ledger.post(
        session,
        kind="bank_top_up",
        ref=member_id,
        memo="Top-up",
        currency=amount.currency,
        postings=ledger.transfer(ledger.CASH, ledger.bank_account(member_id), amount.amount_minor),
        now=ctx.clock.now(),
        postgres=ctx.postgres,
    )
    return ToppedUp(
        entry_id=entry_id,
        amount_minor=amount.amount_minor,
        currency=amount.currency,
        balance_minor=await ledger.balance(session, ledger.bank_account(member_id)),
    )


async def transfer(
    session: AsyncSession, ctx: Fintech, from_member: str, to_member: str, amount_minor: int, currency: str
) -> Transferred:
    amount = positive_money(amount_minor, currency, expected=ctx.settings.currency)
    if not to_member:
        raise InvalidArgument("to_member_id is required")
    if to_member == from_member:
        raise InvalidArgument("cannot transfer to your own account")
    await require_account(session, from_member)
    if await session.get(LedgerAccount, ledger.bank_account(to_member), populate_existing=True) is None:
        raise NotFound(f"member {to_member!r} has no bank account to receive the transfer")
    entry_id = await ledger.post(
        session,
        kind="bank_transfer",
        ref=f"{from_member}->{to_member}",
        memo=f"Transfer from {from_member} to {to_member}",
        currency=amount.currency,
        postings=ledger.transfer(ledger.bank_account(from_member), ledger.bank_account(to_member), amount.amount_minor),
        now=ctx.clock.now(),
        postgres=ctx.postgres,
    )
    return Transferred(
        transfer_id=entry_id,
        amount_minor=amount.amount_minor,
        currency=amount.currency,
        balance_minor=await ledger.balance(session, ledger.bank_account(from_member)),
    )


async def history(session: AsyncSession, member_id: str, limit: int | None = 50) -> list[Movement]:
    """The member's bank movements, newest first (positive money in, negative money out)."""
    account_id = ledger.bank_account(member_id)
    rows = (
        await session.exec(
            select(LedgerPosting, LedgerEntry)
            .where(LedgerPosting.account_id == account_id, LedgerPosting.entry_id == LedgerEntry.entry_id)
            .order_by(col(LedgerPosting.id).desc())
            .limit(limit)
        )
    ).all()
    return [
        Movement(
            entry_id=entry.entry_id,
            kind=entry.kind,
            memo=entry.memo,
            amount_minor=ledger.natural_delta(account_id, posting.amount_minor),
            currency=posting.currency,
            at=entry.created_at,
        )
        for posting, entry in rows
    ]
