"""REST for members (bearer member token) and partner merchants (client-credentials token with
fintech:pay). Thin: validate the shape, call the domain, answer its values as response models
(`api_models`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from kizuna.kit.auth import Principal, member_scope, service_scope
from kizuna.kit.bounds import Text
from kizuna.kit.errors import FailedPrecondition, NotFound
from pydantic import BaseModel, Field, StrictInt
from sqlmodel.ext.asyncio.session import AsyncSession

from fintech import bank, cards, ledger, payments, securities, statements
from fintech.api_models import (
    AuthorizationPublic,
    BankAccountPublic,
    CapturePublic,
    CardLinePublic,
    CardPublic,
    CardStatusPublic,
    FundPublic,
    FundSalePublic,
    HoldingsPublic,
    IssuedCardPublic,
    MovementPublic,
    PaymentPublic,
    RefundPublic,
    StatementPublic,
    TopUpPublic,
    TransferPublic,
    VoidPublic,
)
from fintech.cards import MerchantRef
from fintech.context import FintechDep
from fintech.idempotency import run_once

router = APIRouter()


# Every member route names its scope: reads need fintech:read; opening products, changing the
# card and moving money need fintech:pay (a third-party app the member allowed less is refused).
Reader = Annotated[Principal, Depends(member_scope("fintech:read"))]
Payer = Annotated[Principal, Depends(member_scope("fintech:pay"))]
Key = Field(min_length=1, max_length=200)
# Ids in paths and bodies: fintech's own are a prefix and a ULID; member ids are identity's.
Id = Annotated[Text, Field(min_length=1, max_length=64)]
PathId = Annotated[str, Path(min_length=1, max_length=64)]
Currency = Annotated[Text, Field(max_length=3)]


def _member_id(member: Principal) -> str:
    assert member.member_id is not None  # member_scope guarantees it
    return member.member_id


# ---- card ---------------------------------------------------------------------------------------


class CardApplication(BaseModel):
    annual_income_minor: StrictInt
    idempotency_key: str = Key


@router.post("/api/card/apply", status_code=201)
async def apply_for_card(body: CardApplication, member: Payer, ctx: FintechDep) -> IssuedCardPublic:
    """Issue a card; the response shows the full card number, which is never shown again."""
    issued = await cards.apply_once(ctx, _member_id(member), body.annual_income_minor, body.idempotency_key)
    return IssuedCardPublic.model_validate(issued)


@router.get("/api/card")
async def my_card(member: Reader, ctx: FintechDep) -> CardPublic:
    member_id = _member_id(member)
    async with ctx.db.sessions() as session:
        card = await cards.require_card(session, ctx, member_id)
        now = ctx.clock.now()
        summary = cards.card_summary(card, await cards.available_minor(session, card, now))
        return CardPublic(
            **asdict(summary),
            owed_minor=await ledger.balance(session, ledger.card_account(card.card_id)),
            held_minor=await cards.held_minor(session, card.card_id, now),
            transactions=[CardLinePublic.model_validate(t) for t in await cards.transactions(session, card.card_id)],
        )


class CardStatusChange(BaseModel):
    status: str = Field(pattern="^(active|blocked|closed)$")


@router.post("/api/card/status")
async def change_card_status(body: CardStatusChange, member: Payer, ctx: FintechDep) -> CardStatusPublic:
    """Freeze (blocked), unfreeze (active) or close the card."""
    async with ctx.db.transaction() as session:
        card = await cards.set_status(session, ctx, _member_id(member), body.status)
        return CardStatusPublic(card_id=card.card_id, status=card.status)


# ---- statements ---------------------------------------------------------------------------------


@router.get("/api/card/statements")
async def my_statements(member: Reader, ctx: FintechDep) -> list[StatementPublic]:
    async with ctx.db.sessions() as session:
        return [StatementPublic.model_validate(s) for s in await statements.for_member(session, _member_id(member))]


@router.post("/api/card/statements/close-now")
async def close_statement_now(member: Payer, ctx: FintechDep) -> StatementPublic:
    """Close the member's statement now instead of at month end (only with FINTECH_SANDBOX on)."""
    if not ctx.settings.fintech_sandbox:
        raise NotFound("closing a statement on demand is available in the sandbox only (FINTECH_SANDBOX)")
    async with ctx.db.transaction() as session:
        card = await cards.require_card(session, ctx, _member_id(member))
        statement = await statements.close(session, ctx, card.card_id, ctx.clock.now())
        if statement is None:
            raise FailedPrecondition("nothing to bill: no posted lines since the last statement")
        return StatementPublic.model_validate(statements.statement_view(statement, []))


class PaymentIn(BaseModel):
    bank_minor: StrictInt = 0
    points: StrictInt = 0
    idempotency_key: str = Key


@router.post("/api/card/statements/{statement_id}/pay")
async def pay_statement(statement_id: PathId, body: PaymentIn, member: Payer, ctx: FintechDep) -> PaymentPublic:
    """Pay a statement from the bank account and/or with points (the member's token must grant
    points:spend when points are used: it is passed to the points service as their consent)."""
    paid = await payments.pay(
        ctx,
        ctx.points,
        member_id=_member_id(member),
        member_token=member.token,
        purpose="card_bill",
        target_id=statement_id,
        bank_minor=body.bank_minor,
        points=body.points,
        key=body.idempotency_key,
        check=statements.check_bill,
        apply=statements.apply_bill,
        reason="Kizuna Card bill",
    )
    return PaymentPublic.model_validate(paid)


# ---- bank ---------------------------------------------------------------------------------------


@router.post("/api/bank/account", status_code=201)
async def open_bank_account(member: Payer, ctx: FintechDep) -> BankAccountPublic:
    member_id = _member_id(member)
    async with ctx.db.transaction() as session:
        await bank.open_account(session, ctx, member_id)
    return await bank_account(member, ctx)


@router.get("/api/bank")
async def bank_account(member: Reader, ctx: FintechDep) -> BankAccountPublic:
    member_id = _member_id(member)
    async with ctx.db.sessions() as session:
        account = await bank.require_account(session, member_id)
        return BankAccountPublic(
            member_id=member_id,
            balance_minor=account.balance_minor,
            currency=account.currency,
            history=[MovementPublic.model_validate(m) for m in await bank.history(session, member_id)],
        )


class MoneyIn(BaseModel):
    amount_minor: StrictInt
    currency: Currency = "JPY"
    idempotency_key: str = Key


@router.post("/api/bank/top-up")
async def top_up(body: MoneyIn, member: Payer, ctx: FintechDep) -> TopUpPublic:
    """Test money into the account (only with FINTECH_SANDBOX on)."""
    if not ctx.settings.fintech_sandbox:
        raise NotFound("top-up is available in the sandbox only (FINTECH_SANDBOX)")
    member_id = _member_id(member)

    async def operation(session: AsyncSession) -> bank.ToppedUp:
        return await bank.top_up(session, ctx, member_id, body.amount_minor, body.currency)

    topped_up = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{member_id}:top-up",
        key=body.idempotency_key,
        request={"amount": [body.amount_minor, body.currency]},
        operation=operation,
        result=bank.ToppedUp,
    )
    return TopUpPublic.model_validate(topped_up)


class TransferIn(MoneyIn):
    to_member_id: Id


@router.post("/api/bank/transfers")
async def transfer(body: TransferIn, member: Payer, ctx: FintechDep) -> TransferPublic:
    member_id = _member_id(member)

    async def operation(session: AsyncSession) -> bank.Transferred:
        return await bank.transfer(session, ctx, member_id, body.to_member_id, body.amount_minor, body.currency)

    sent = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{member_id}:transfer",
        key=body.idempotency_key,
        request={"to": body.to_member_id, "amount": [body.amount_minor, body.currency]},
        operation=operation,
        result=bank.Transferred,
    )
    return TransferPublic.model_validate(sent)


# ---- securities ---------------------------------------------------------------------------------


@router.get("/api/funds")
async def funds(ctx: FintechDep) -> list[FundPublic]:
    async with ctx.db.sessions() as session:
        return [FundPublic.model_validate(f) for f in await securities.catalogue(session, ctx.clock.now().date())]


@router.get("/api/holdings")
async def my_holdings(member: Reader, ctx: FintechDep) -> HoldingsPublic:
    async with ctx.db.sessions() as session:
        held = await securities.holdings(session, _member_id(member), ctx.clock.now().date(), ctx.settings.currency)
    return HoldingsPublic.model_validate(held)


@router.post("/api/funds/{fund_id}/buy")
async def buy_fund(fund_id: PathId, body: PaymentIn, member: Payer, ctx: FintechDep) -> PaymentPublic:
    """Buy units for bank_minor of cash and/or points (one point pays one yen)."""
    paid = await payments.pay(
        ctx,
        ctx.points,
        member_id=_member_id(member),
        member_token=member.token,
        purpose="fund_buy",
        target_id=fund_id,
        bank_minor=body.bank_minor,
        points=body.points,
        key=body.idempotency_key,
        check=securities.check_fund,
        apply=securities.apply_buy,
        reason="Kizuna fund purchase",
    )
    return PaymentPublic.model_validate(paid)


class SellIn(BaseModel):
    units_micro: StrictInt
    idempotency_key: str = Key


@router.post("/api/funds/{fund_id}/sell")
async def sell_fund(fund_id: PathId, body: SellIn, member: Payer, ctx: FintechDep) -> FundSalePublic:
    member_id = _member_id(member)

    async def operation(session: AsyncSession) -> securities.Sold:
        return await securities.sell(session, ctx, member_id, fund_id, body.units_micro)

    sold = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{member_id}:fund-sell",
        key=body.idempotency_key,
        request={"fund": fund_id, "units": body.units_micro},
        operation=operation,
        result=securities.Sold,
    )
    return FundSalePublic.model_validate(sold)


# ---- merchant API (partner merchants outside the ecosystem) -------------------------------------


# Partner merchants call with their own client-credentials token carrying fintech:pay.
Merchant = Annotated[Principal, Depends(service_scope("fintech:pay"))]


def _merchant(principal: Principal) -> str:
    return principal.client_id


class MerchantAuthorizationIn(BaseModel):
    card_number: str = Field(min_length=12, max_length=23)
    amount_minor: StrictInt
    currency: Currency = "JPY"
    description: Text = Field(default="", max_length=200)
    idempotency_key: str = Key


@router.post("/merchant/v1/authorizations")
async def merchant_authorize(
    body: MerchantAuthorizationIn, principal: Merchant, ctx: FintechDep
) -> AuthorizationPublic:
    client_id = _merchant(principal)
    token = cards.card_number_token(ctx.card_token_key, body.card_number)

    async def operation(session: AsyncSession) -> cards.AuthorizationDecision:
        card = await cards.card_by_token(session, token)
        return await cards.authorize(
            session,
            ctx,
            card=card,
            client_id=client_id,
            merchant=MerchantRef(f"partner:{client_id}", body.description or client_id),
            amount_minor=body.amount_minor,
            currency=body.currency,
        )

    decision = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{client_id}:authorize",
        key=body.idempotency_key,
        request={"card": token, "amount": [body.amount_minor, body.currency], "description": body.description},
        operation=operation,
        result=cards.AuthorizationDecision,
    )
    return AuthorizationPublic.model_validate(decision)


class MerchantCaptureIn(BaseModel):
    amount_minor: StrictInt | None = None
    currency: Currency = ""
    idempotency_key: str = Key


@router.post("/merchant/v1/authorizations/{authorization_id}/capture")
async def merchant_capture(
    authorization_id: PathId, body: MerchantCaptureIn, principal: Merchant, ctx: FintechDep
) -> CapturePublic:
    client_id = _merchant(principal)

    async def operation(session: AsyncSession) -> cards.Captured:
        return await cards.capture(
            session,
            ctx,
            client_id=client_id,
            authorization_id=authorization_id,
            amount_minor=body.amount_minor,
            currency=body.currency,
        )

    captured = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{client_id}:capture",
        key=body.idempotency_key,
        request={"authorization_id": authorization_id, "amount": [body.amount_minor, body.currency]},
        operation=operation,
        result=cards.Captured,
    )
    return CapturePublic.model_validate(captured)


class KeyOnly(BaseModel):
    idempotency_key: str = Key


@router.post("/merchant/v1/authorizations/{authorization_id}/void")
async def merchant_void(authorization_id: PathId, body: KeyOnly, principal: Merchant, ctx: FintechDep) -> VoidPublic:
    client_id = _merchant(principal)

    async def operation(session: AsyncSession) -> cards.Voided:
        return await cards.void(session, ctx, client_id=client_id, authorization_id=authorization_id)

    voided = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{client_id}:void",
        key=body.idempotency_key,
        request={"authorization_id": authorization_id},
        operation=operation,
        result=cards.Voided,
    )
    return VoidPublic.model_validate(voided)


class MerchantRefundIn(MerchantCaptureIn):
    capture_id: Id


@router.post("/merchant/v1/refunds")
async def merchant_refund(body: MerchantRefundIn, principal: Merchant, ctx: FintechDep) -> RefundPublic:
    client_id = _merchant(principal)

    async def operation(session: AsyncSession) -> cards.Refunded:
        return await cards.refund(
            session,
            ctx,
            client_id=client_id,
            capture_id=body.capture_id,
            amount_minor=body.amount_minor,
            currency=body.currency,
        )

    refunded = await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{client_id}:refund",
        key=body.idempotency_key,
        request={"capture_id": body.capture_id, "amount": [body.amount_minor, body.currency]},
        operation=operation,
        result=cards.Refunded,
    )
    return RefundPublic.model_validate(refunded)
