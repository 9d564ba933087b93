"""What purchases earn: quotes under the earn rules and campaigns, counted against the monthly cap
under the wallet lock, and granted as regular and limited-time credits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kizuna.kit.db import OnDriver
from sqlalchemy import BindParameter, and_, bindparam, exists, func, union
from sqlalchemy import select as core_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from points import campaigns, ledger
from points.bounds import Limits, check_money
from points.crediting import credit
from points.ledger import LIMITED_TIME, REGULAR
from points.models import Wallet
from points.wallets import require_active


@dataclass
class Earned:
    """What an earn credited: regular points and campaign (limited-time) points, and why."""

    earned: int
    bonus: int
    explanation: str
    rate_bp: int
    balance_after: int
    entry_id: str = ""
    bonus_entry_id: str = ""


USES = SQLModel.metadata.tables["points_service_use"]
_USE: dict[str, BindParameter[str]] = {
    "member_id": bindparam("member_id"),
    "month": bindparam("month"),
    "service": bindparam("service"),
}
_RECORD_USE_SQLITE = sqlite_insert(USES).values(_USE).on_conflict_do_nothing()
_USED = select(USES.c.service).where(USES.c.member_id == _USE["member_id"], USES.c.month == _USE["month"])
# PostgreSQL: record the use and read the month's services in one round trip. The outer SELECT
# sees the table as it was before the statement, so the row it adds comes back through RETURNING.
_ADDED = pg_insert(USES).values(_USE).on_conflict_do_nothing().returning(USES.c.service).cte("added")
_RECORD_AND_LIST_PG = union(_USED, select(_ADDED.c.service))
# PostgreSQL, an earning's one read: record the use and list the month's services (as above),
# whether the member used the service before this purchase, and the live earn campaigns (one row
# each, oldest first; one row of NULLs when there are none).
_USE_SO_FAR = _RECORD_AND_LIST_PG.subquery()
_USE_READ = core_select(
    core_select(func.array_agg(_USE_SO_FAR.c.service)).scalar_subquery().label("used_services"),
    exists().where(USES.c.member_id == _USE["member_id"], USES.c.service == _USE["service"]).label("used_before"),
).subquery("service_use")
_EARN_READ_PG = (
    core_select(_USE_READ, campaigns.CAMPAIGNS)
    .select_from(
        _USE_READ.outerjoin(
            campaigns.CAMPAIGNS,
            and_(
                campaigns.CAMPAIGNS.c.kind == "earn",
                campaigns.CAMPAIGNS.c.starts_at <= bindparam("now"),
                campaigns.CAMPAIGNS.c.ends_at > bindparam("now"),
            ),
        )
    )
    .order_by(campaigns.CAMPAIGNS.c.created_at)
)
_EARN_READ = OnDriver(_EARN_READ_PG, "SELECT points_service_use earn read")


async def services_used(session: AsyncSession, member_id: str, month: str) -> list[str]:
    conn = await session.connection()
    return sorted((await conn.execute(_USED, {"member_id": member_id, "month": month})).scalars().all())


async def record_service_use(session: AsyncSession, member_id: str, service: str, now: datetime) -> list[str]:
    """Record that the member used `service` this month (once); returns the services they used
    this month, this one included, sorted. Core statements on the session's connection: no
    autoflush of the wallet's pending changes (the entry's statement writes those)."""
    conn = await session.connection()
    month = ledger.month_key(now)
    params = {"member_id": member_id, "month": month, "service": service}
    if conn.dialect.name != "postgresql":
        await conn.execute(_RECORD_USE_SQLITE, params)
        return await services_used(session, member_id, month)
    return sorted((await conn.execute(_RECORD_AND_LIST_PG, params)).scalars().all())


async def quote_and_count(
    session: AsyncSession, wallet: Wallet, rules: ledger.EarnRules, service: str, units: int, now: datetime
) -> ledger.EarnQuote:
    """Quote an earn and count it against the member's monthly cap (under the wallet lock), with the
    live campaigns the member qualifies for (before this purchase counts as a use of the service)."""
    month = ledger.month_key(now)
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        # One round trip where the path below takes two or three.
        params = {"member_id": wallet.member_id, "month": month, "service": service, "now": now}
        rows = await _EARN_READ.fetch(session, params)
        live = [row for row in rows if row.id is not None]
        rules = campaigns.qualify(rules, live, wallet, service, now, used_before=rows[0].used_before)
        used = sorted(rows[0].used_services or ())
    else:
        rules = await campaigns.with_campaigns(session, rules, wallet, service, now)
        used = await record_service_use(session, wallet.member_id, service, now)
    if wallet.earn_month != month:
        wallet.earn_month, wallet.earned_this_month = month, 0
    quote = ledger.quote_earn(rules, service, units, used, wallet.earned_this_month, now)
    wallet.earned_this_month += quote.total
    session.add(wallet)
    return quote


async def preview_earn(
    session: AsyncSession, rules: ledger.EarnRules, member_id: str, service: str, units: int, now: datetime
) -> ledger.EarnQuote:
    """What a purchase would earn the member now (read-only: nothing counted, nothing locked). An
    unknown member is quoted as a new one: nothing earned this month, no other services used."""
    month = ledger.month_key(now)
    wallet = await session.get(Wallet, member_id)
    rules = await campaigns.with_campaigns(session, rules, wallet, service, now)
    earned = wallet.earned_this_month if wallet is not None and wallet.earn_month == month else 0
    used = set(await services_used(session, member_id, month)) | {service}
    return ledger.quote_earn(rules, service, units, used, earned, now)


async def earn(
    session: AsyncSession,
    wallet: Wallet | None,
    now: datetime,
    *,
    member_id: str,
    amount_minor: int,
    currency: str,
    service: str,
    source_ref: str,
    key: str,
    rules: ledger.EarnRules,
    regular_expiry_months: int,
    limits: Limits,
) -> Earned:
    """Credit what a purchase earns under the earn rules (regular points, plus campaign points)."""
    check_money(amount_minor, currency, limits, "purchase")
    wallet = require_active(wallet, member_id)
    quote = await quote_and_count(session, wallet, rules, service, ledger.currency_units(amount_minor, currency), now)
    return await grant(
        session,
        wallet,
        now,
        quote=quote,
        service=service,
        label=rules.label(service),
        source_ref=source_ref,
        key=key,
        regular_expiry_months=regular_expiry_months,
        limits=limits,
    )


async def grant(
    session: AsyncSession,
    wallet: Wallet,
    now: datetime,
    *,
    quote: ledger.EarnQuote,
    service: str,
    label: str,
    source_ref: str,
    key: str,
    regular_expiry_months: int,
    limits: Limits,
    what: str = "",
) -> Earned:
    """Credit an earn quote: its regular points, and its campaign points as a limited-time lot.
    `what` is the purchase as the member reads it (default: its reference)."""
    what = what or source_ref
    where = f"Earned at {label}" + (f" on {what}" if what else "")
    response = Earned(
        earned=quote.regular,
        bonus=quote.bonus,
        explanation=quote.explanation,
        rate_bp=quote.rate_bp,
        balance_after=wallet.available,
    )
    if quote.regular > 0:
        done = await credit(
            session,
            wallet,
            now,
            member_id=wallet.member_id,
            amount=quote.regular,
            kind=REGULAR,
            reason=f"{where}: {quote.explanation}",
            source_service=service,
            source_ref=source_ref,
            expires_at=None,
            key=key,
            regular_expiry_months=regular_expiry_months,
            limits=limits,
        )
        response.entry_id, response.balance_after = done.entry_id, done.balance_after
    if quote.bonus > 0:
        done = await credit(
            session,
            wallet,
            now,
            member_id=wallet.member_id,
            amount=quote.bonus,
            kind=LIMITED_TIME,
            reason=f"{where}: campaign bonus",
            source_service=service,
            source_ref=source_ref,
            expires_at=quote.bonus_expires_at,
            key=key,
            regular_expiry_months=regular_expiry_months,
            limits=limits,
        )
        response.bonus_entry_id, response.balance_after = done.entry_id, done.balance_after
    return response
