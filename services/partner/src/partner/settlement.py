"""Settlement: per partner and month, the points its stores issued (the partner owes their value)
and redeemed (the ecosystem owes the partner). Issued points are what the ledger credited, net of
what it took back, as points reports it on `points.ledger.credited` / `.clawed_back` for this
service's purchases; redeemed points are those captured at the partner's tills, net of returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from kizuna.kit.errors import InvalidArgument
from kizuna.kit.events import Consumer, Event, durable_name
from kizuna.points.v1 import events_pb2 as points_events
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from partner.models import Partner, Sale
from partner.till import COMPLETED, EARN, SERVICE, SPEND

LEDGER = "points"
CREDITED, CLAWED_BACK = "points.ledger.credited", "points.ledger.clawed_back"


@dataclass(frozen=True)
class Statement:
    partner_id: str
    partner_name: str
    month: str
    points_issued: int
    points_redeemed: int

    @property
    def net_owed_by_partner(self) -> int:
        """Positive: the partner pays the ecosystem (one point is worth one yen)."""
        return self.points_issued - self.points_redeemed


def month_bounds(month: str) -> tuple[datetime, datetime]:
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidArgument("month must look like 2026-12") from None
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


async def statement(session: AsyncSession, partner: Partner, month: str) -> Statement:
    start, end = month_bounds(month)
    in_month = (col(Sale.partner_id) == partner.id, col(Sale.created_at) >= start, col(Sale.created_at) < end)
    issued = (
        await session.exec(
            select(func.coalesce(func.sum(Sale.issued_points), 0)).where(col(Sale.kind) == EARN, *in_month)
        )
    ).one()
    redeemed = (
        await session.exec(
            select(func.coalesce(func.sum(Sale.points - Sale.returned_points), 0)).where(
                col(Sale.kind) == SPEND, col(Sale.status) == COMPLETED, *in_month
            )
        )
    ).one()
    return Statement(partner.id, partner.name, month, int(issued), int(redeemed))


async def on_ledger(session: AsyncSession, event: Event) -> None:
    """What the ledger credited or took back for one of this service's purchases."""
    if event.owner != LEDGER or event.subject not in (CREDITED, CLAWED_BACK):
        return  # other ledger events (reserved, captured, ...) say nothing of what was issued
    if event.subject == CREDITED:
        credited = event.parse(points_events.Credited)
        service, ref, delta = credited.source_service, credited.source_ref, credited.amount
    else:
        taken = event.parse(points_events.ClawedBack)
        service, ref, delta = taken.source_service, taken.source_ref, -taken.clawed_back
    if service != SERVICE:
        return
    sale = await session.get(Sale, ref, with_for_update=True)
    if sale is None or sale.kind != EARN:
        return
    sale.issued_points += delta
    session.add(sale)


consumers = [Consumer(durable_name("partner", "ledger"), ["points.ledger.>"], on_ledger)]
