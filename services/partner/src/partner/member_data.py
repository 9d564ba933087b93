"""What partner holds about a member, and how it forgets them (kizuna.kit.privacy).

Export: the card's number and every till transaction. Erasure: the card (with its grant) and the
sign-in sessions go; transactions stay for the partners' settlement, under a pseudonym that
cannot be traced back.
"""

from __future__ import annotations

import uuid
from typing import Any

from kizuna.kit.oidc_client import WebSession
from sqlalchemy import update
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from partner.models import Card, Sale


async def export(session: AsyncSession, member_id: str) -> dict[str, Any]:
    card = (await session.exec(select(Card).where(col(Card.member_id) == member_id))).first()
    sales = (
        await session.exec(select(Sale).where(col(Sale.member_id) == member_id).order_by(col(Sale.created_at)))
    ).all()
    return {
        "card": {"number": card.number, "since": card.created_at.isoformat()} if card else None,
        "transactions": [
            {
                "id": s.id,
                "kind": s.kind,
                "store": s.label,
                "amount_minor": s.amount_minor,
                "points": s.points,
                "returned_minor": s.returned_minor,
                "returned_points": s.returned_points,
                "status": s.status,
                "at": s.created_at.isoformat(),
            }
            for s in sales
        ],
    }


async def erase(session: AsyncSession, member_id: str) -> None:
    pseudonym = f"erased_{uuid.uuid4().hex}"
    await session.exec(delete(Card).where(col(Card.member_id) == member_id))
    await session.exec(update(Sale).where(col(Sale.member_id) == member_id).values(member_id=pseudonym))
    await session.exec(delete(WebSession).where(col(WebSession.member_id) == member_id))
