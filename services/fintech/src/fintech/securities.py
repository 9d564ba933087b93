"""Securities: a catalogue of funds with a daily price, buying units with bank cash and/or points
(through the payments saga), selling units into the bank account, holdings and valuation.

Units are counted in millionths; prices are minor units per whole unit. A fund's daily price is
derived deterministically from its seed price and the date, so every replica and every test
sees the same price for the same day.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from kizuna.kit.service import Runtime
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from fintech import ledger, payments
from fintech.context import Fintech, fintech_of
from fintech.models import Fund, Holding, LedgerAccount, PointsPayment

MICRO = 1_000_000
MAX_MICRO_UNITS = 10**12 * MICRO  # far beyond any holding, well inside int64

SEED_FUNDS = [
    Fund(
        fund_id="kzn-world-equity",
        name="Kizuna World Equity Index",
        currency="JPY",
        base_price_minor=21_500,
        volatility_bp=150,
    ),
    Fund(
        fund_id="kzn-japan-topix",
        name="Kizuna Japan TOPIX Index",
        currency="JPY",
        base_price_minor=14_800,
        volatility_bp=120,
    ),
    Fund(
        fund_id="kzn-global-bond", name="Kizuna Global Bond", currency="JPY", base_price_minor=10_200, volatility_bp=40
    ),
]


@dataclass(frozen=True)
class FundQuote:
    fund_id: str
    name: str
    currency: str
    price_minor: int  # one whole unit on price_date
    price_date: date


@dataclass(frozen=True)
class Position:
    """What a member holds of one fund, valued at today's price."""

    fund_id: str
    name: str
    units_micro: int
    price_minor: int
    value_minor: int
    cost_minor: int  # what the member paid for the units held
    gain_minor: int  # value - cost


@dataclass(frozen=True)
class Portfolio:
    holdings: list[Position]
    total_value_minor: int
    currency: str


@dataclass(frozen=True)
class Sold:
    fund_id: str
    units_micro: int
    price_minor: int
    proceeds_minor: int  # paid into the bank account
    cost_minor: int  # what the sold units had cost
    realized_gain_minor: int
    currency: str


def price_on(fund: Fund, day: date) -> int:
    """The fund's price for one unit on `day`: within ±volatility of its seed price."""
    digest = int.from_bytes(hashlib.sha256(f"{fund.fund_id}:{day.isoformat()}".encode()).digest()[:8], "big")
    move_bp = digest % (2 * fund.volatility_bp + 1) - fund.volatility_bp
    return fund.base_price_minor * (10_000 + move_bp) // 10_000


def units_for(amount_minor: int, price_minor: int) -> int:
    """Micro-units bought for an amount (rounded down: the member never gets more than paid for)."""
    return amount_minor * MICRO // price_minor


def micro_units(text: str) -> int:
    """Whole units as a member types them ("1.5", up to six decimals) in millionths."""
    try:
        units = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidArgument("give the units as a number, like 1.5") from None
    micro = units * MICRO
    if not units.is_finite() or micro != micro.to_integral_value() or not 0 < micro <= MAX_MICRO_UNITS:
        raise InvalidArgument("give between 0.000001 and 1,000,000,000,000 units, with at most six decimals")
    return int(micro)


def value_of(units_micro: int, price_minor: int) -> int:
    """What units are worth (rounded down)."""
    return units_micro * price_minor // MICRO


async def seed_funds(runtime: Runtime[Any]) -> None:
    ctx = fintech_of(runtime)
    async with ctx.db.transaction() as session:
        insert = pg_insert if ctx.postgres else sqlite_insert
        for fund in SEED_FUNDS:
            await session.exec(insert(Fund).values(**fund.model_dump()).on_conflict_do_nothing())


async def require_fund(session: AsyncSession, fund_id: str) -> Fund:
    fund = await session.get(Fund, fund_id)
    if fund is None:
        raise NotFound(f"unknown fund {fund_id!r}")
    return fund


async def catalogue(session: AsyncSession, today: date) -> list[FundQuote]:
    funds = (await session.exec(select(Fund).order_by(col(Fund.fund_id)))).all()
    return [
        FundQuote(fund_id=f.fund_id, name=f.name, currency=f.currency, price_minor=price_on(f, today), price_date=today)
        for f in funds
    ]


async def check_fund(session: AsyncSession, ctx: Fintech, member_id: str, fund_id: str, amount_minor: int) -> None:
    fund = await require_fund(session, fund_id)
    if amount_minor < price_on(fund, ctx.clock.now().date()) // 100:
        raise InvalidArgument("the amount buys less than a hundredth of a unit")


async def _lock_holding(session: AsyncSession, ctx: Fintech, member_id: str, fund_id: str) -> Holding | None:
    query = select(Holding).where(Holding.member_id == member_id, Holding.fund_id == fund_id)
    if ctx.postgres:
        query = query.with_for_update()
    return (await session.exec(query.execution_options(populate_existing=True))).first()


async def apply_buy(session: AsyncSession, ctx: Fintech, payment: PointsPayment) -> None:
    fund = await require_fund(session, payment.target_id)
    amount = payment.bank_minor + payment.points
    price = price_on(fund, ctx.clock.now().date())
    units = units_for(amount, price)
    await ledger.post(
        session,
        kind="fund_buy",
        ref=payment.payment_id,
        memo=f"Buy {fund.name}",
        currency=payment.currency,
        postings=payments.settlement_postings(payment, ledger.fund_account(fund.fund_id)),
        now=ctx.clock.now(),
        postgres=ctx.postgres,
    )
    holding = await _lock_holding(session, ctx, payment.member_id, fund.fund_id)
    if holding is None:
        holding = Holding(member_id=payment.member_id, fund_id=fund.fund_id, units_micro=0, cost_minor=0)
    holding.units_micro += units
    holding.cost_minor += amount
    session.add(holding)
    await session.flush()


def sale_postings(fund_id: str, member_id: str, sold_cost: int, proceeds: int) -> list[ledger.Posting]:
    """The fund gives up the sold units' cost, the bank gets the proceeds, and the difference is the
    member's realized gain (or loss): the fund account then always equals the cost of what is held."""
    postings = [ledger.Posting(ledger.bank_account(member_id), -proceeds)]
    if sold_cost:
        postings.append(ledger.Posting(ledger.fund_account(fund_id), sold_cost))
    if proceeds != sold_cost:
        postings.append(ledger.Posting(ledger.realized_account(fund_id), proceeds - sold_cost))
    return postings


async def sell(session: AsyncSession, ctx: Fintech, member_id: str, fund_id: str, units_micro: int) -> Sold:
    if units_micro <= 0:
        raise InvalidArgument(f"units_micro must be positive, got {units_micro}")
    fund = await require_fund(session, fund_id)
    holding = await _lock_holding(session, ctx, member_id, fund_id)
    held = 0 if holding is None else holding.units_micro
    if holding is None or units_micro > held:
        raise FailedPrecondition(f"cannot sell {units_micro} micro-units: {held} held")
    if await session.get(LedgerAccount, ledger.bank_account(member_id)) is None:
        raise NotFound(f"member {member_id!r} has no bank account to receive the proceeds")
    price = price_on(fund, ctx.clock.now().date())
    proceeds = value_of(units_micro, price)
    if proceeds <= 0:
        raise InvalidArgument("too few units to be worth anything")
    sold_cost = holding.cost_minor * units_micro // holding.units_micro
    await ledger.post(
        session,
        kind="fund_sell",
        ref=f"{member_id}:{fund_id}",
        memo=f"Sell {fund.name}",
        currency=fund.currency,
        postings=sale_postings(fund_id, member_id, sold_cost, proceeds),
        now=ctx.clock.now(),
        postgres=ctx.postgres,
    )
    holding.units_micro -= units_micro
    holding.cost_minor -= sold_cost
    session.add(holding)
    await session.flush()
    return Sold(
        fund_id=fund_id,
        units_micro=units_micro,
        price_minor=price,
        proceeds_minor=proceeds,
        cost_minor=sold_cost,
        realized_gain_minor=proceeds - sold_cost,
        currency=fund.currency,
    )


async def holdings(session: AsyncSession, member_id: str, today: date, currency: str) -> Portfolio:
    """The member's funds valued at `today`'s prices (in the one `currency` of accounts)."""
    rows = (
        await session.exec(select(Holding, Fund).where(Holding.member_id == member_id, Holding.fund_id == Fund.fund_id))
    ).all()
    items: list[Position] = []
    for holding, fund in rows:
        if holding.units_micro == 0:
            continue
        price = price_on(fund, today)
        value = value_of(holding.units_micro, price)
        items.append(
            Position(
                fund_id=fund.fund_id,
                name=fund.name,
                units_micro=holding.units_micro,
                price_minor=price,
                value_minor=value,
                cost_minor=holding.cost_minor,
                gain_minor=value - holding.cost_minor,
            )
        )
    return Portfolio(holdings=items, total_value_minor=sum(i.value_minor for i in items), currency=currency)
