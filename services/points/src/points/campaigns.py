"""Campaigns as data: created through the admin API (scope points:admin) or `python -m points seed`,
read by the earn rules at each quote.

- kind "earn": purchases at the campaign's services (or every earner) within [starts_at, ends_at)
  earn extra points, `multiplier` x the base rate and/or a `fixed_bonus` per purchase, paid as
  limited-time points that expire on `points_expire_at` (and are spent first).
- kind "welcome": a member who joins within the window gets `fixed_bonus` limited-time points.
- audience: "all", "new_members" (joined within `new_member_days`), or "first_use" (the member's
  first purchase at that service).
A campaign moves points only within the ledger's bounds (MAX_CREDIT_POINTS, the per-purchase and
per-month earn caps, the issuing service's daily budget).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from kizuna.kit.errors import AlreadyExists, InvalidArgument
from pydantic import AwareDatetime, BaseModel, Field, model_validator
from sqlalchemy import Row, bindparam
from sqlalchemy import select as core_select
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from points import ledger
from points.models import CampaignRow, ServiceUse, Wallet


class NewCampaign(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    kind: Literal["earn", "welcome"] = "earn"
    services: list[str] = Field(default=["*"], min_length=1, max_length=50)
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    points_expire_at: AwareDatetime
    multiplier: float = Field(default=0.0, ge=0, le=10)
    fixed_bonus: int = Field(default=0, ge=0, le=1_000_000)
    audience: Literal["all", "new_members", "first_use"] = "all"
    new_member_days: int = Field(default=30, ge=1, le=3650)

    @model_validator(mode="after")
    def _coherent(self) -> NewCampaign:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.points_expire_at <= self.starts_at:
            raise ValueError("points_expire_at must be after starts_at")
        if self.multiplier <= 1 and self.fixed_bonus == 0:
            raise ValueError("give a multiplier above 1 or a fixed_bonus above 0")
        if self.kind == "welcome" and (self.fixed_bonus == 0 or self.multiplier):
            raise ValueError("a welcome campaign gives a fixed_bonus and no multiplier")
        return self


def view(row: CampaignRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "services": json.loads(row.services),
        "starts_at": row.starts_at.isoformat(),
        "ends_at": row.ends_at.isoformat(),
        "points_expire_at": row.points_expire_at.isoformat(),
        "multiplier": row.multiplier,
        "fixed_bonus": row.fixed_bonus,
        "audience": row.audience,
        "new_member_days": row.new_member_days,
    }


async def create(
    session: AsyncSession, campaign: NewCampaign, now: datetime, earners: list[str], max_points: int
) -> CampaignRow:
    unknown = sorted(set(campaign.services) - {*earners, "*"})
    if unknown:
        raise InvalidArgument(f"not services that earn points: {', '.join(unknown)}")
    if campaign.fixed_bonus > max_points:
        raise InvalidArgument(f"fixed_bonus is above the most one credit may give ({max_points})")
    taken = (await session.exec(select(CampaignRow).where(CampaignRow.name == campaign.name))).first()
    if taken is not None:
        raise AlreadyExists(f"a campaign named {campaign.name!r} exists already")
    row = CampaignRow(
        id=f"cmp_{ULID()}",
        created_at=now,
        **{**campaign.model_dump(), "services": json.dumps(sorted(set(campaign.services)))},
    )
    session.add(row)
    await session.flush()
    return row


CAMPAIGNS = SQLModel.metadata.tables["points_campaign"]
_LIVE = (
    core_select(CAMPAIGNS)
    .where(
        CAMPAIGNS.c.kind == bindparam("kind"),
        CAMPAIGNS.c.starts_at <= bindparam("now"),
        CAMPAIGNS.c.ends_at > bindparam("now"),
    )
    .order_by(CAMPAIGNS.c.created_at)
)


async def live(session: AsyncSession, kind: str, now: datetime) -> list[Row[Any]]:
    """The campaigns of `kind` live at `now`, oldest first: rows with CampaignRow's fields, read
    with a core statement (every earning reads them; no ORM objects, no autoflush)."""
    conn = await session.connection()
    return list((await conn.execute(_LIVE, {"kind": kind, "now": now})).all())


async def with_campaigns(
    session: AsyncSession, rules: ledger.EarnRules, wallet: Wallet | None, service: str, now: datetime
) -> ledger.EarnRules:
    """The earn rules plus the live earn campaigns this member and service qualify for."""
    rows = await live(session, "earn", now)
    first_use = any(row.audience == "first_use" for row in rows)
    used_before = wallet is not None and first_use and await _used_before(session, wallet, service)
    return qualify(rules, rows, wallet, service, now, used_before=used_before)


def qualify(
    rules: ledger.EarnRules,
    rows: list[Any],
    wallet: Wallet | None,
    service: str,
    now: datetime,
    *,
    used_before: bool,
) -> ledger.EarnRules:
    """The earn rules plus those of the live earn campaigns `rows` this member and service qualify
    for; `used_before`: whether the member used the service before this purchase."""
    extra: list[ledger.Campaign] = []
    for row in rows:
        services = json.loads(row.services)
        if "*" not in services and service not in services:
            continue
        if row.audience == "new_members" and (
            wallet is None or wallet.created_at < now - timedelta(days=row.new_member_days)
        ):
            continue
        if row.audience == "first_use" and wallet is not None and used_before:
            continue
        extra.append(
            ledger.Campaign(
                name=row.name,
                service=service,
                starts_at=row.starts_at,
                ends_at=row.ends_at,
                points_expire_at=row.points_expire_at,
                fixed_bonus=row.fixed_bonus,
                multiplier=row.multiplier,
            )
        )
    return replace(rules, campaigns=rules.campaigns + tuple(extra)) if extra else rules


async def _used_before(session: AsyncSession, wallet: Wallet, service: str) -> bool:
    query = select(ServiceUse.month).where(ServiceUse.member_id == wallet.member_id, ServiceUse.service == service)
    return (await session.exec(query.limit(1))).first() is not None


@dataclass(frozen=True)
class LiveCampaign:
    """A campaign live now, as a member's home or a product page shows it."""

    campaign_id: str
    name: str
    kind: str
    services: tuple[str, ...]
    multiplier: float
    fixed_bonus: int
    starts_at: datetime
    ends_at: datetime
    audience: str


async def live_now(session: AsyncSession, rules: ledger.EarnRules, now: datetime) -> list[LiveCampaign]:
    """Every campaign live at `now`: those created as data and those from settings (EARN_CAMPAIGNS),
    the soonest to end first."""
    found = [
        LiveCampaign(
            campaign_id=row.id,
            name=row.name,
            kind=row.kind,
            services=tuple(json.loads(row.services)),
            multiplier=row.multiplier,
            fixed_bonus=row.fixed_bonus,
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            audience=row.audience,
        )
        for kind in ("earn", "welcome")
        for row in await live(session, kind, now)
    ]
    found += [
        LiveCampaign(
            campaign_id=f"setting:{c.name}",
            name=c.name,
            kind="earn",
            services=(c.service,),
            multiplier=c.multiplier,
            fixed_bonus=c.fixed_bonus,
            starts_at=c.starts_at,
            ends_at=c.ends_at,
            audience="all",
        )
        for c in rules.campaigns
        if c.starts_at <= now < c.ends_at
    ]
    return sorted(found, key=lambda c: (c.ends_at, c.name))


async def all_campaigns(session: AsyncSession) -> list[CampaignRow]:
    return list((await session.exec(select(CampaignRow).order_by(col(CampaignRow.created_at)))).all())


def demo_campaigns(now: datetime) -> list[NewCampaign]:
    """What `python -m points seed` creates (once): the welcome bonus and one live campaign."""
    return [
        NewCampaign(
            name="Welcome bonus",
            kind="welcome",
            starts_at=now - timedelta(days=1),
            ends_at=now + timedelta(days=365),
            points_expire_at=now + timedelta(days=90),
            fixed_bonus=300,
        ),
        NewCampaign(
            name="Kizuna launch: double points everywhere",
            kind="earn",
            services=["*"],
            starts_at=now - timedelta(days=1),
            ends_at=now + timedelta(days=30),
            points_expire_at=now + timedelta(days=60),
            multiplier=2.0,
        ),
    ]


async def seed(session: AsyncSession, now: datetime, earners: list[str], max_points: int) -> list[str]:
    """Create the demo campaigns that do not exist yet (by name); returns the names created."""
    created = []
    for campaign in demo_campaigns(now):
        exists = (await session.exec(select(CampaignRow).where(CampaignRow.name == campaign.name))).first()
        if exists is None:
            await create(session, campaign, now, earners, max_points)
            created.append(campaign.name)
    return created
