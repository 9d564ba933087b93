"""Bounds: the most one operation may move, the most one purchase may be, and each service's daily
credit budget."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple, NoReturn

from kizuna.kit.db import OnDriver
from kizuna.kit.errors import (
    InvalidArgument,
)
from sqlalchemy import ARRAY, BigInteger, Integer, String, bindparam, func, text
from sqlalchemy import select as core_select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from points.journal import CHARGE_CTES, CHARGE_PARAMS, Charge
from points.ledger_metrics import budget_refused
from points.wallets import OverBudget


class Limits(NamedTuple):
    """The most one credit may give, and each service's points per UTC day."""

    max_credit_points: int
    max_purchase_minor: int
    daily_budget: Callable[[str], int]

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(settings.max_credit_points, settings.max_purchase_minor, settings.daily_budget)


def check_money(amount_minor: int, currency: str, limits: Limits, what: str, *, allow_zero: bool = False) -> None:
    if amount_minor < 0 or (amount_minor == 0 and not allow_zero):
        raise InvalidArgument(f"{what}.amount_minor must be {'>= 0' if allow_zero else '> 0'}")
    if amount_minor > limits.max_purchase_minor:
        raise InvalidArgument(
            f"{what}.amount_minor {amount_minor} is above the most one purchase may be ({limits.max_purchase_minor})"
        )
    if currency and not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
        raise InvalidArgument(f"{what}.currency must be an ISO 4217 code such as JPY")


BUDGET_SHARDS = 8
DAILY = SQLModel.metadata.tables["points_daily_credit"]


def check_points(amount: int, limits: Limits, what: str = "amount") -> None:
    if amount <= 0:
        raise InvalidArgument(f"{what} must be > 0")
    if amount > limits.max_credit_points:
        raise InvalidArgument(f"{what} {amount} is above the most one credit may give ({limits.max_credit_points})")


# PostgreSQL: the day's count and the charge in one round trip. The charge is written only when it
# fits, so a refused credit leaves the count as it was (the same as reading, then upserting).
_CHARGE_PG = text(f"WITH {CHARGE_CTES}\nSELECT points FROM used").bindparams(*CHARGE_PARAMS)


def charge_of(service: str, member_id: str, amount: int, now: datetime, limits: Limits) -> Charge:
    """`amount` counted against `service`'s budget today, on the member's shard."""
    return Charge(service, now.date().isoformat(), budget_shard(member_id), amount, limits.daily_budget(service))


def refuse_charge(charge: Charge, used: int) -> NoReturn:
    """OverBudget for a charge that did not fit, `used` points credited so far."""
    _refuse(charge.service, used, charge.budget, charge.charge)


async def charge_budget(
    session: AsyncSession, service: str, member_id: str, amount: int, now: datetime, limits: Limits
) -> None:
    """Count `amount` against `service`'s credits today, or refuse it (OverBudget) if that would
    exceed the budget. The count is spread over BUDGET_SHARDS rows by member, so concurrent credits
    of one service rarely wait on each other; two in flight at once may together pass the budget
    by at most one credit each."""
    conn = await session.connection()
    charge = charge_of(service, member_id, amount, now, limits)
    if conn.dialect.name == "postgresql":
        used = (await conn.execute(_CHARGE_PG, charge._asdict())).scalar_one()
        if used + amount > charge.budget:
            refuse_charge(charge, used)
        return
    used = (
        await conn.execute(
            core_select(func.coalesce(func.sum(DAILY.c.points), 0)).where(
                DAILY.c.service == service, DAILY.c.day == charge.day
            )
        )
    ).scalar_one()
    if used + amount > charge.budget:
        refuse_charge(charge, used)
    statement = sqlite_insert(DAILY).values(service=service, day=charge.day, shard=charge.shard, points=amount)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["service", "day", "shard"], set_={"points": DAILY.c.points + statement.excluded.points}
        )
    )


def budget_shard(member_id: str) -> int:
    return zlib.crc32(member_id.encode()) % BUDGET_SHARDS


_USED_MANY_PG = OnDriver(
    text("""SELECT service, coalesce(sum(points), 0)::bigint AS points FROM points_daily_credit
WHERE day = :day AND service = ANY(:services) GROUP BY service""").bindparams(
        bindparam("services", type_=ARRAY(String()))
    ),
    "SELECT points_daily_credit",
)
# Shard rows in one order, so two of these never wait on each other in a cycle.
_CHARGE_MANY_PG = OnDriver(
    text("""INSERT INTO points_daily_credit (service, day, shard, points)
SELECT c.service, :day, c.shard, c.points FROM unnest(:services, :shards, :points) AS c(service, shard, points)
ORDER BY c.service, c.shard
ON CONFLICT (service, day, shard) DO UPDATE SET points = points_daily_credit.points + excluded.points""").bindparams(
        bindparam("services", type_=ARRAY(String())),
        bindparam("shards", type_=ARRAY(Integer())),
        bindparam("points", type_=ARRAY(BigInteger())),
    ),
    "INSERT points_daily_credit",
)


class Budgets:
    """The daily budgets of many credits in one transaction (PostgreSQL): each service's count read
    once, each credit checked against it in turn, the charges written in one statement. Two such
    transactions in flight at once may together pass a budget by at most one of them."""

    def __init__(self, limits: Limits, now: datetime) -> None:
        self.limits = limits
        self.day = now.date().isoformat()
        self.used: dict[str, int] = {}
        self.charges: dict[tuple[str, int], int] = {}

    async def load(self, session: AsyncSession, services: set[str]) -> None:
        rows = await _USED_MANY_PG.fetch(session, {"day": self.day, "services": sorted(services)})
        self.used = dict.fromkeys(services, 0) | {row.service: row.points for row in rows}

    def charge(self, service: str, member_id: str, amount: int) -> None:
        """Count `amount` against `service` or refuse it (OverBudget), as `charge_budget` does."""
        used, budget = self.used[service], self.limits.daily_budget(service)
        if used + amount > budget:
            _refuse(service, used, budget, amount)
        self.used[service] = used + amount
        shard = (service, budget_shard(member_id))
        self.charges[shard] = self.charges.get(shard, 0) + amount

    async def write(self, session: AsyncSession) -> None:
        if not self.charges:
            return
        shards = sorted(self.charges)
        params = {
            "day": self.day,
            "services": [service for service, _ in shards],
            "shards": [shard for _, shard in shards],
            "points": [self.charges[shard] for shard in shards],
        }
        await _CHARGE_MANY_PG.fetch(session, params)


def _refuse(service: str, used: int, budget: int, amount: int) -> NoReturn:
    budget_refused.add(1, {"service": service})
    raise OverBudget(f"{service} has credited {used} of its {budget} points today; {amount} more is refused")
