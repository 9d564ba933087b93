"""partner's REST API.

- `/api/partners/apply` (anyone): a company applies.
- `/api/admin/...` (`partner:admin`): approve under a contract, rotate a partner's till secret,
  add stores, the settlement of every partner.
- `/api/pos/...` (the partner's own credentials, HTTP Basic `partner_id:secret`): earn, spend,
  returns, the partner's monthly statement. A partner sees only its own stores and transactions.
- `/api/card` (the member, `partner:read`): their card and its current code; revoke it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from kizuna.kit.auth import Principal, any_scope, member_scope
from kizuna.kit.bounds import NonNegInt64, PositiveInt64, Text
from kizuna.kit.errors import NotFound
from pydantic import BaseModel, Field
from sqlmodel import select

from partner import cards, partners, settlement
from partner.codes import STEP
from partner.context import ContextDep
from partner.models import Partner, Sale, Store

router = APIRouter(prefix="/api", tags=["partner"])
Admin = Annotated[Principal, Depends(any_scope("partner:admin"))]
Member = Annotated[Principal, Depends(member_scope("partner:read"))]
Id = Annotated[Text, Field(min_length=1, max_length=64)]
Name = Annotated[Text, Field(min_length=1, max_length=200)]


async def partner_of(request: Request, context: ContextDep) -> Partner:
    """The partner whose till calls: HTTP Basic with its id and secret."""
    async with context.db.sessions() as session:
        return await partners.authenticate_basic(session, request.headers.get("authorization", ""))


PartnerAuth = Annotated[Partner, Depends(partner_of)]


# ---- models --------------------------------------------------------------------------------------
class Application(BaseModel):
    name: Name
    contact_email: Annotated[Text, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


class Approval(BaseModel):
    earn_rate_bp: Annotated[int, Field(ge=100, le=1_000)] = 100
    return_window_days: Annotated[int, Field(ge=0, le=90)] = 14


class PartnerPublic(BaseModel):
    id: str
    name: str
    status: str
    earn_rate_bp: int
    return_window_days: int

    @classmethod
    def of(cls, p: Partner) -> PartnerPublic:
        return cls.model_validate(p, from_attributes=True)


class Credentials(BaseModel):
    partner: PartnerPublic
    partner_id: str
    secret: str


class NewStore(BaseModel):
    name: Name


class StorePublic(BaseModel):
    id: str
    partner_id: str
    name: str

    @classmethod
    def of(cls, s: Store) -> StorePublic:
        return cls.model_validate(s, from_attributes=True)


class EarnRequest(BaseModel):
    store_id: Id
    terminal: Id
    receipt: Id
    code: Annotated[Text, Field(min_length=1, max_length=40)]
    amount_minor: PositiveInt64
    currency: Annotated[Text, Field(min_length=3, max_length=3)] = "JPY"


class SpendRequest(BaseModel):
    store_id: Id
    terminal: Id
    receipt: Id
    code: Annotated[Text, Field(min_length=1, max_length=40)]
    points: PositiveInt64


class ReturnRequest(BaseModel):
    store_id: Id
    terminal: Id
    receipt: Id
    return_receipt: Id
    amount_minor: NonNegInt64 = 0
    points: NonNegInt64 = 0


class SalePublic(BaseModel):
    """What a till learns of a transaction: nothing about the member but that it went through."""

    id: str
    kind: str
    store_id: str
    terminal: str
    receipt: str
    amount_minor: int
    points: int
    status: str
    returned_minor: int
    returned_points: int
    earning_final_at: datetime | None

    @classmethod
    def of(cls, s: Sale) -> SalePublic:
        return cls(
            id=s.id,
            kind=s.kind,
            store_id=s.store_id,
            terminal=s.terminal,
            receipt=s.receipt,
            amount_minor=s.amount_minor,
            points=s.points,
            status=s.status,
            returned_minor=s.returned_minor,
            returned_points=s.returned_points,
            earning_final_at=s.completes_at if s.kind == "earn" else None,
        )


class ReturnPublic(BaseModel):
    id: str
    sale_id: str
    return_receipt: str
    amount_minor: int
    points: int


class StatementPublic(BaseModel):
    partner_id: str
    partner_name: str
    month: str
    points_issued: int
    points_redeemed: int
    net_owed_by_partner: int

    @classmethod
    def of(cls, s: settlement.Statement) -> StatementPublic:
        return cls.model_validate(s, from_attributes=True)


class CardPublic(BaseModel):
    number: str
    code: str
    valid_for_seconds: int


Month = Annotated[str, Field(pattern=r"^\d{4}-\d{2}$")]


# ---- applying and admin ----------------------------------------------------------------------------
@router.post("/partners/apply", status_code=201)
async def apply(body: Application, context: ContextDep) -> PartnerPublic:
    async with context.db.transaction() as session:
        partner = await partners.apply(session, body.name, str(body.contact_email), context.clock.now())
    return PartnerPublic.of(partner)


@router.post("/admin/partners/{partner_id}/approve")
async def approve(partner_id: Id, body: Approval, _admin: Admin, context: ContextDep) -> Credentials:
    async with context.db.transaction() as session:
        partner, secret = await partners.approve(session, partner_id, body.earn_rate_bp, body.return_window_days)
    return Credentials(partner=PartnerPublic.of(partner), partner_id=partner.id, secret=secret)


@router.post("/admin/partners/{partner_id}/rotate-secret")
async def rotate(partner_id: Id, _admin: Admin, context: ContextDep) -> Credentials:
    async with context.db.transaction() as session:
        secret = await partners.rotate_secret(session, partner_id)
        partner = await partners.get(session, partner_id)
    return Credentials(partner=PartnerPublic.of(partner), partner_id=partner.id, secret=secret)


@router.post("/admin/partners/{partner_id}/stores", status_code=201)
async def add_store(partner_id: Id, body: NewStore, _admin: Admin, context: ContextDep) -> StorePublic:
    async with context.db.transaction() as session:
        store = await partners.add_store(session, partner_id, body.name, context.clock.now())
    return StorePublic.of(store)


@router.get("/admin/settlement")
async def all_statements(month: Month, _admin: Admin, context: ContextDep) -> list[StatementPublic]:
    async with context.db.sessions() as session:
        rows = (await session.exec(select(Partner).order_by(Partner.name))).all()
        return [StatementPublic.of(await settlement.statement(session, p, month)) for p in rows]


# ---- the till ------------------------------------------------------------------------------------
@router.post("/pos/earn")
async def earn(body: EarnRequest, partner: PartnerAuth, context: ContextDep) -> SalePublic:
    sale = await context.till.earn(
        partner,
        store_id=body.store_id,
        terminal=body.terminal,
        receipt=body.receipt,
        scanned=body.code,
        amount_minor=body.amount_minor,
        currency=body.currency,
    )
    return SalePublic.of(sale)


@router.post("/pos/spend")
async def spend(body: SpendRequest, partner: PartnerAuth, context: ContextDep) -> SalePublic:
    sale = await context.till.spend(
        partner,
        store_id=body.store_id,
        terminal=body.terminal,
        receipt=body.receipt,
        scanned=body.code,
        points=body.points,
    )
    return SalePublic.of(sale)


@router.post("/pos/returns")
async def take_return(body: ReturnRequest, partner: PartnerAuth, context: ContextDep) -> list[ReturnPublic]:
    done = await context.till.take_return(
        partner,
        store_id=body.store_id,
        terminal=body.terminal,
        receipt=body.receipt,
        return_receipt=body.return_receipt,
        amount_minor=body.amount_minor,
        points=body.points,
    )
    return [ReturnPublic.model_validate(r, from_attributes=True) for r in done]


@router.get("/pos/statement")
async def statement(month: Month, partner: PartnerAuth, context: ContextDep) -> StatementPublic:
    async with context.db.sessions() as session:
        return StatementPublic.of(await settlement.statement(session, partner, month))


# ---- the member's card ---------------------------------------------------------------------------
@router.get("/card")
async def my_card(member: Member, context: ContextDep) -> CardPublic:
    async with context.db.sessions() as session:
        card = await cards.of_member(session, member.subject)
    if card is None:
        raise NotFound("you have no point card yet: open the card page to get one")
    return CardPublic(number=card.number, code=cards.current_code(card, context.clock.now()), valid_for_seconds=STEP)


@router.post("/card", status_code=201)
async def enroll(
    member: Annotated[Principal, Depends(member_scope("points:spend"))], context: ContextDep
) -> CardPublic:
    """A new card for the member calling (earlier codes stop working). Spending at tills uses the
    presented token until it expires; the card page keeps the sign-in's refresh token instead."""
    member.require_scope("partner:read")  # and points:spend (the dependency): 403 naming the scope
    now = context.clock.now()
    expires = datetime.fromtimestamp(int(member.claims.get("exp", 0)), tz=now.tzinfo)
    async with context.db.transaction() as session:
        card = await cards.enroll(
            session, member.subject, access_token=member.token, refresh_token="", access_expires_at=expires, now=now
        )
    return CardPublic(number=card.number, code=cards.current_code(card, now), valid_for_seconds=STEP)


@router.delete("/card", status_code=204)
async def revoke_card(member: Member, context: ContextDep) -> None:
    async with context.db.transaction() as session:
        if not await cards.revoke(session, member.subject):
            raise NotFound("you have no point card")
