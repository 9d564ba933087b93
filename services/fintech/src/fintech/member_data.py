"""What fintech holds about a member, for the ecosystem's privacy protocol (`kizuna.kit.privacy`).

Export: the card (never its token), its lines and holds, statements, bill and fund payments,
the bank account with its full history, and holdings.

Erasure keeps the books: ledger accounts, entries and postings, statements, card lines and
holdings stay, keyed by the bare member ID (which identity never reissues). What goes: the card
token and last four digits (the card is closed and its open holds voided), the web sessions
(display name, tokens) and the idempotency records (request fingerprints and outcomes).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kizuna.kit.db import utcnow
from kizuna.kit.oidc_client import WebSession
from pydantic_core import to_jsonable_python
from sqlalchemy import delete, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from fintech import bank, cards, ledger, securities, statements
from fintech.models import Authorization, Card, IdempotencyRecord, LedgerAccount, PointsPayment


async def export(session: AsyncSession, member_id: str) -> dict[str, Any]:
    now = utcnow()
    member_cards = (await session.exec(select(Card).where(Card.member_id == member_id))).all()
    card_views: list[dict[str, Any]] = []
    for card in member_cards:
        lines = await cards.transactions(session, card.card_id, limit=None)
        holds = (await session.exec(select(Authorization).where(Authorization.card_id == card.card_id))).all()
        card_views.append(
            {
                **asdict(cards.card_summary(card, await cards.available_minor(session, card, now))),
                "opened_at": card.opened_at.isoformat(),
                "owed_minor": await ledger.balance(session, ledger.card_account(card.card_id)),
                "transactions": [
                    {
                        "txn_id": t.txn_id,
                        "kind": t.kind,
                        "description": t.description,
                        "amount_minor": t.amount_minor,
                        "currency": t.currency,
                        "posted_at": t.posted_at.isoformat(),
                    }
                    for t in lines
                ],
                "authorizations": [
                    {
                        "authorization_id": a.authorization_id,
                        "merchant": a.merchant_name,
                        "amount_minor": a.amount_minor,
                        "currency": a.currency,
                        "status": a.status,
                        "decline_reason": a.decline_reason,
                        "created_at": a.created_at.isoformat(),
                    }
                    for a in holds
                ],
            }
        )
    account = await session.get(LedgerAccount, ledger.bank_account(member_id))
    paid = (await session.exec(select(PointsPayment).where(PointsPayment.member_id == member_id))).all()
    exported: dict[str, Any] = to_jsonable_python(
        {
            "cards": card_views,
            "statements": await statements.for_member(session, member_id),
            "bank": None
            if account is None
            else {
                "balance_minor": account.balance_minor,
                "currency": account.currency,
                "opened_at": account.created_at.isoformat(),
                "history": await bank.history(session, member_id, limit=None),
            },
            "payments": [
                {
                    "payment_id": p.payment_id,
                    "purpose": p.purpose,
                    "target_id": p.target_id,
                    "bank_minor": p.bank_minor,
                    "points": p.points,
                    "currency": p.currency,
                    "status": p.status,
                    "created_at": p.created_at.isoformat(),
                }
                for p in paid
            ],
            "holdings": await securities.holdings(
                session, member_id, now.date(), account.currency if account is not None else "JPY"
            ),
        }
    )
    return exported


async def erase(session: AsyncSession, member_id: str) -> None:
    member_cards = (await session.exec(select(Card).where(Card.member_id == member_id))).all()
    for card in member_cards:
        await session.exec(
            update(Authorization)
            .where(col(Authorization.card_id) == card.card_id, col(Authorization.status) == cards.APPROVED)
            .values(status=cards.VOIDED)
        )
        card.pan_token = f"erased:{card.card_id}"
        card.last4 = ""
        card.status = "closed"
        session.add(card)
    await session.exec(delete(WebSession).where(col(WebSession.member_id) == member_id))
    await session.exec(
        delete(IdempotencyRecord).where(col(IdempotencyRecord.scope).startswith(f"{member_id}:", autoescape=True))
    )
    await session.flush()
