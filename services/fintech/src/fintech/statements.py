"""Monthly card statements: at each closing, the card's posted lines not yet billed become a
statement with a total and a due date. Statements close at the start of each calendar month
(UTC) by a job; the sandbox can also close one now."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from kizuna.fintech.v1 import events_pb2
from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from kizuna.kit.events import publish
from kizuna.kit.service import Runtime
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from fintech import ledger, payments
from fintech.cards import lock_card, money_pb, ts
from fintech.context import Fintech, fintech_of
from fintech.models import Card, CardTransaction, PointsPayment, Statement

log = logging.getLogger("fintech.statements")


@dataclass(frozen=True)
class StatementLine:
    """A purchase or a refund billed on the statement."""

    txn_id: str
    kind: str  # purchase or refund
    description: str
    amount_minor: int  # a refund is negative
    posted_at: datetime


@dataclass(frozen=True)
class StatementPayment:
    txn_id: str
    description: str
    amount_minor: int  # what the payment paid (positive)
    posted_at: datetime


@dataclass(frozen=True)
class StatementView:
    statement_id: str
    period_start: datetime
    closing_at: datetime
    due_on: date
    total_minor: int
    paid_minor: int
    due_minor: int  # still to pay
    currency: str
    status: str  # open or paid
    lines: list[StatementLine]
    payments: list[StatementPayment]


def month_start(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def due_date(closing_at: datetime, due_days: int) -> date:
    return (closing_at + timedelta(days=due_days)).date()


async def close(session: AsyncSession, ctx: Fintech, card_id: str, closing_at: datetime) -> Statement | None:
    """Bill the card's unbilled lines posted before `closing_at`; None when there are none."""
    card = await lock_card(session, ctx, card_id)
    lines = list(
        (
            await session.exec(
                select(CardTransaction).where(
                    CardTransaction.card_id == card.card_id,
                    col(CardTransaction.statement_id).is_(None),
                    col(CardTransaction.kind).in_(["purchase", "refund"]),
                    col(CardTransaction.posted_at) <= closing_at,
                )
            )
        ).all()
    )
    period_start = card.last_closed_at
    card.last_closed_at = max(card.last_closed_at, closing_at)
    session.add(card)
    if not lines:
        await session.flush()
        return None
    total = sum(line.amount_minor for line in lines)
    statement = Statement(
        statement_id=f"stm_{ULID()}",
        card_id=card.card_id,
        member_id=card.member_id,
        period_start=period_start,
        closing_at=closing_at,
        due_on=due_date(closing_at, ctx.settings.statement_due_days),
        total_minor=total,
        paid_minor=0,
        currency=card.currency,
        status="open" if total > 0 else "paid",
    )
    session.add(statement)
    for line in lines:
        line.statement_id = statement.statement_id
        session.add(line)
    await session.flush()
    return statement


async def close_due_statements(ctx: Fintech) -> int:
    """Close last month's statement of every card not closed since this month began."""
    boundary = month_start(ctx.clock.now())
    async with ctx.db.sessions() as session:
        card_ids = (
            await session.exec(select(Card.card_id).where(Card.status != "closed", col(Card.last_closed_at) < boundary))
        ).all()
    closed = 0
    for card_id in card_ids:
        async with ctx.db.transaction() as session:
            if await close(session, ctx, card_id, boundary) is not None:
                closed += 1
    return closed


async def statement_job(runtime: Runtime[Any]) -> None:
    ctx = fintech_of(runtime)
    while True:
        try:
            await close_due_statements(ctx)
        except Exception:
            log.exception("closing statements failed; will retry")
        await asyncio.sleep(ctx.settings.statement_interval_seconds)


def statement_view(statement: Statement, lines: list[CardTransaction]) -> StatementView:
    return StatementView(
        statement_id=statement.statement_id,
        period_start=statement.period_start,
        closing_at=statement.closing_at,
        due_on=statement.due_on,
        total_minor=statement.total_minor,
        paid_minor=statement.paid_minor,
        due_minor=max(statement.total_minor - statement.paid_minor, 0),
        currency=statement.currency,
        status=statement.status,
        lines=[
            StatementLine(
                txn_id=t.txn_id,
                kind=t.kind,
                description=t.description,
                amount_minor=t.amount_minor,
                posted_at=t.posted_at,
            )
            for t in sorted(lines, key=lambda t: t.posted_at)
            if t.kind != "payment"
        ],
        payments=[
            StatementPayment(
                txn_id=t.txn_id, description=t.description, amount_minor=-t.amount_minor, posted_at=t.posted_at
            )
            for t in sorted(lines, key=lambda t: t.posted_at)
            if t.kind == "payment"
        ],
    )


async def for_member(session: AsyncSession, member_id: str) -> list[StatementView]:
    statements = (
        await session.exec(
            select(Statement).where(Statement.member_id == member_id).order_by(col(Statement.closing_at).desc())
        )
    ).all()
    out = []
    for s in statements:
        lines = (
            await session.exec(select(CardTransaction).where(CardTransaction.statement_id == s.statement_id))
        ).all()
        out.append(statement_view(s, list(lines)))
    return out


# ---- paying a statement (the two ends of payments.pay) -------------------------------------------


async def _lock_statement(session: AsyncSession, ctx: Fintech, member_id: str, statement_id: str) -> Statement:
    query = select(Statement).where(Statement.statement_id == statement_id)
    if ctx.postgres:
        query = query.with_for_update()
    statement = (await session.exec(query.execution_options(populate_existing=True))).first()
    if statement is None or statement.member_id != member_id:
        raise NotFound(f"unknown statement {statement_id!r}")
    return statement


async def check_bill(session: AsyncSession, ctx: Fintech, member_id: str, statement_id: str, amount_minor: int) -> None:
    """The statement is the member's, and the amount is at most what is still due."""
    statement = await _lock_statement(session, ctx, member_id, statement_id)
    due = (
        statement.total_minor
        - statement.paid_minor
        - await payments.in_flight_minor(session, "card_bill", statement_id)
    )
    if due <= 0:
        raise FailedPrecondition(f"statement {statement_id} has nothing left to pay")
    if amount_minor > due:
        raise InvalidArgument(f"payment {amount_minor} exceeds the {due} {statement.currency} still due")


async def apply_bill(session: AsyncSession, ctx: Fintech, payment: PointsPayment) -> None:
    statement = await _lock_statement(session, ctx, payment.member_id, payment.target_id)
    now = ctx.clock.now()
    amount = payment.bank_minor + payment.points
    await ledger.post(
        session,
        kind="card_bill_payment",
        ref=payment.payment_id,
        memo=f"Statement {statement.statement_id}",
        currency=payment.currency,
        postings=payments.settlement_postings(payment, ledger.card_account(statement.card_id)),
        now=now,
        postgres=ctx.postgres,
    )
    session.add(
        CardTransaction(
            txn_id=payment.payment_id,
            card_id=statement.card_id,
            member_id=statement.member_id,
            kind="payment",
            description=f"Payment (bank {payment.bank_minor}, points {payment.points})",
            amount_minor=-amount,
            currency=payment.currency,
            statement_id=statement.statement_id,
            posted_at=now,
        )
    )
    statement.paid_minor += amount
    if statement.paid_minor >= statement.total_minor:
        statement.status = "paid"
    session.add(statement)
    await publish(
        session,
        "fintech.card_bill.paid",
        events_pb2.CardBillPaid(
            member_id=statement.member_id,
            statement_id=statement.statement_id,
            amount=money_pb(amount, payment.currency),
            points_used=payment.points,
            paid_at=ts(now),
        ),
        member_id=statement.member_id,
    )
    await session.flush()
