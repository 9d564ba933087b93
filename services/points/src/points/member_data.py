"""What points holds about a member, for the kit's privacy protocol (export and erasure).

Points knows a member only by the opaque member ID: no name, no email. Erasure closes the
wallet and drops the member's web sessions; the journal entries stay, under the bare member ID,
because the books must balance and settlement between services depends on them.
"""

from __future__ import annotations

from typing import Any

from kizuna.kit.oidc_client import WebSession
from kizuna.kit.privacy import Privacy
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from points import wallets
from points.models import Entry, Lot


async def export(session: AsyncSession, member_id: str) -> dict[str, Any]:
    wallet = await wallets.lock_wallet(session, member_id)
    entries = (
        await session.exec(select(Entry).where(Entry.member_id == member_id).order_by(col(Entry.created_at)))
    ).all()
    lots = (await session.exec(select(Lot).where(Lot.member_id == member_id))).all()
    return {
        "wallet": None
        if wallet is None
        else {
            "status": wallet.status,
            "available": wallet.available,
            "held": wallet.held,
            "debt": wallet.debt,
            "created_at": wallet.created_at.isoformat(),
        },
        "entries": [
            {
                "entry_id": e.entry_id,
                "kind": e.kind,
                "amount": e.amount,
                "explanation": e.explanation,
                "service": e.source_service,
                "at": e.created_at.isoformat(),
            }
            for e in entries
        ],
        "lots": [lot.model_dump(mode="json") for lot in lots],
    }


async def erase(session: AsyncSession, member_id: str) -> None:
    wallet = await wallets.lock_wallet(session, member_id)
    if wallet is not None:
        wallet.status = "erased"
        session.add(wallet)
    await session.exec(delete(WebSession).where(col(WebSession.member_id) == member_id))


privacy = Privacy(export=export, erase=erase)
