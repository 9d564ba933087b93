"""REST for members (bearer member token) and partner merchants (client-credentials token with
fintech:pay), plus the web pages. Thin: validate the shape, call the domain, return JSON."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from kizuna.kit.auth import Principal, member_scope, service_scope
from kizuna.kit.errors import FailedPrecondition, NotFound
from pydantic import BaseModel, Field, StrictInt

from fintech import bank, cards, ledger, payments, securities, statements
from fintech.cards import MerchantRef
from fintech.context import FintechDep, fintech_of
from fintech.idempotency import run_once

router = APIRouter()


# Every member route names its scope: reads need fintech:read; opening products, changing the
# card and moving money need fintech:pay (a third-party app the member allowed less is refused).
Reader = Annotated[Principal, Depends(member_scope("fintech:read"))]
Payer = Annotated[Principal, Depends(member_scope("fintech:pay"))]
Key = Field(min_length=1, max_length=200)


def _member_id(member: Principal) -> str:
    assert member.member_id is not None  # member_scope guarantees it
    return member.member_id


# ---- card ---------------------------------------------------------------------------------------


class CardApplication(BaseModel):
    annual_income_minor: StrictInt
    idempotency_key: str = Key


@router.post("/api/card/apply", status_code=201)
async def apply_for_card(body: CardApplication, member: Payer, ctx: FintechDep) -> dict[str, Any]:
    """Issue a card; the response shows the full card number, which is never shown again."""
    return await cards.apply_once(ctx, _member_id(member), body.annual_income_minor, body.idempotency_key)


@router.get("/api/card")
async def my_card(member: Reader, ctx: FintechDep) -> dict[str, Any]:
    member_id = _member_id(member)
    async with ctx.db.sessions() as session:
        card = await cards.require_card(session, ctx, member_id)
        now = ctx.clock.now()
        summary = cards.card_summary(card, await cards.available_minor(session, card, now))
        summary["owed_minor"] = await ledger.balance(session, ledger.card_account(card.card_id))
        summary["held_minor"] = await cards.held_minor(session, card.card_id, now)
        summary["transactions"] = [
            {
                "txn_id": t.txn_id,
                "kind": t.kind,
                "description": t.description,
                "amount_minor": t.amount_minor,
                "currency": t.currency,
                "posted_at": t.posted_at.isoformat(),
                "statement_id": t.statement_id,
            }
            for t in await cards.transactions(session, card.card_id)
        ]
        return summary


class CardStatusChange(BaseModel):
    status: str = Field(pattern="^(active|blocked|closed)$")


@router.post("/api/card/status")
async def change_card_status(body: CardStatusChange, member: Payer, ctx: FintechDep) -> dict[str, Any]:
    """Freeze (blocked), unfreeze (active) or close the card."""
    async with ctx.db.transaction() as session:
        card = await cards.set_status(session, ctx, _member_id(member), body.status)
        return {"card_id": card.card_id, "status": card.status}


# ---- statements ---------------------------------------------------------------------------------


@router.get("/api/card/statements")
async def my_statements(member: Reader, ctx: FintechDep) -> list[dict[str, Any]]:
    async with ctx.db.sessions() as session:
        return await statements.for_member(session, _member_id(member))


@router.post("/api/card/statements/close-now")
async def close_statement_now(member: Payer, ctx: FintechDep) -> dict[str, Any]:
    """Close the member's statement now instead of at month end (only with FINTECH_SANDBOX on)."""
    if not ctx.settings.fintech_sandbox:
        raise NotFound("closing a statement on demand is available in the sandbox only (FINTECH_SANDBOX)")
    async with ctx.db.transaction() as session:
        card = await cards.require_card(session, ctx, _member_id(member))
        statement = await statements.close(session, ctx, card.card_id, ctx.clock.now())
        if statement is None:
            raise FailedPrecondition("nothing to bill: no posted lines since the last statement")
        return statements.statement_view(statement, [])


class PaymentIn(BaseModel):
    bank_minor: StrictInt = 0
    points: StrictInt = 0
    idempotency_key: str = Key


@router.post("/api/card/statements/{statement_id}/pay")
async def pay_statement(
    statement_id: str, body: PaymentIn, member: Payer, ctx: FintechDep, request: Request
) -> dict[str, Any]:
    """Pay a statement from the bank account and/or with points (the member's token must grant
    points:spend when points are used: it is passed to the points service as their consent)."""
    return await payments.pay(
        ctx,
        fintech_of(request.app.state.runtime).points,
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


# ---- bank ---------------------------------------------------------------------------------------


@router.post("/api/bank/account", status_code=201)
async def open_bank_account(member: Payer, ctx: FintechDep) -> dict[str, Any]:
    member_id = _member_id(member)
    async with ctx.db.transaction() as session:
        await bank.open_account(session, ctx, member_id)
    return await bank_account(member, ctx)


@router.get("/api/bank")
async def bank_account(member: Reader, ctx: FintechDep) -> dict[str, Any]:
    member_id = _member_id(member)
    async with ctx.db.sessions() as session:
        account = await bank.require_account(session, member_id)
        return {
            "member_id": member_id,
            "balance_minor": account.balance_minor,
            "currency": account.currency,
            "history": await bank.history(session, member_id),
        }


class MoneyIn(BaseModel):
    amount_minor: StrictInt
    currency: str = "JPY"
    idempotency_key: str = Key


@router.post("/api/bank/top-up")
async def top_up(body: MoneyIn, member: Payer, ctx: FintechDep) -> dict[str, Any]:
    """Test money into the account (only with FINTECH_SANDBOX on)."""
    if not ctx.settings.fintech_sandbox:
        raise NotFound("top-up is available in the sandbox only (FINTECH_SANDBOX)")
    member_id = _member_id(member)

    async def operation(session: Any) -> dict[str, Any]:
        return await bank.top_up(session, ctx, member_id, body.amount_minor, body.currency)

    return await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{member_id}:top-up",
        key=body.idempotency_key,
        request={"amount": [body.amount_minor, body.currency]},
        operation=operation,
    )


class TransferIn(MoneyIn):
    to_member_id: str


@router.post("/api/bank/transfers")
async def transfer(body: TransferIn, member: Payer, ctx: FintechDep) -> dict[str, Any]:
    member_id = _member_id(member)

    async def operation(session: Any) -> dict[str, Any]:
        return await bank.transfer(session, ctx, member_id, body.to_member_id, body.amount_minor, body.currency)

    return await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{member_id}:transfer",
        key=body.idempotency_key,
        request={"to": body.to_member_id, "amount": [body.amount_minor, body.currency]},
        operation=operation,
    )


# ---- securities ---------------------------------------------------------------------------------


@router.get("/api/funds")
async def funds(ctx: FintechDep) -> list[dict[str, Any]]:
    async with ctx.db.sessions() as session:
        return await securities.catalogue(session, ctx.clock.now().date())


@router.get("/api/holdings")
async def my_holdings(member: Reader, ctx: FintechDep) -> dict[str, Any]:
    async with ctx.db.sessions() as session:
        return await securities.holdings(session, _member_id(member), ctx.clock.now().date())


@router.post("/api/funds/{fund_id}/buy")
async def buy_fund(fund_id: str, body: PaymentIn, member: Payer, ctx: FintechDep, request: Request) -> dict[str, Any]:
    """Buy units for bank_minor of cash and/or points (one point pays one yen)."""
    return await payments.pay(
        ctx,
        fintech_of(request.app.state.runtime).points,
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


class SellIn(BaseModel):
    units_micro: StrictInt
    idempotency_key: str = Key


@router.post("/api/funds/{fund_id}/sell")
async def sell_fund(fund_id: str, body: SellIn, member: Payer, ctx: FintechDep) -> dict[str, Any]:
    member_id = _member_id(member)

    async def operation(session: Any) -> dict[str, Any]:
        return await securities.sell(session, ctx, member_id, fund_id, body.units_micro)

    return await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{member_id}:fund-sell",
        key=body.idempotency_key,
        request={"fund": fund_id, "units": body.units_micro},
        operation=operation,
    )


# ---- merchant API (partner merchants outside the ecosystem) -------------------------------------


# Partner merchants call with their own client-credentials token carrying fintech:pay.
Merchant = Annotated[Principal, Depends(service_scope("fintech:pay"))]


def _merchant(principal: Principal) -> str:
    return principal.client_id


class MerchantAuthorizationIn(BaseModel):
    card_number: str = Field(min_length=12, max_length=23)
    amount_minor: StrictInt
    currency: str = "JPY"
    description: str = Field(default="", max_length=200)
    idempotency_key: str = Key


@router.post("/merchant/v1/authorizations")
async def merchant_authorize(body: MerchantAuthorizationIn, principal: Merchant, ctx: FintechDep) -> dict[str, Any]:
    client_id = _merchant(principal)
    token = cards.card_number_token(ctx.card_token_key, body.card_number)

    async def operation(session: Any) -> dict[str, Any]:
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

    return await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{client_id}:authorize",
        key=body.idempotency_key,
        request={"card": token, "amount": [body.amount_minor, body.currency], "description": body.description},
        operation=operation,
    )


class MerchantCaptureIn(BaseModel):
    amount_minor: StrictInt | None = None
    currency: str = ""
    idempotency_key: str = Key


@router.post("/merchant/v1/authorizations/{authorization_id}/capture")
async def merchant_capture(
    authorization_id: str, body: MerchantCaptureIn, principal: Merchant, ctx: FintechDep
) -> dict[str, Any]:
    client_id = _merchant(principal)

    async def operation(session: Any) -> dict[str, Any]:
        return await cards.capture(
            session,
            ctx,
            client_id=client_id,
            authorization_id=authorization_id,
            amount_minor=body.amount_minor,
            currency=body.currency,
        )

    return await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{client_id}:capture",
        key=body.idempotency_key,
        request={"authorization_id": authorization_id, "amount": [body.amount_minor, body.currency]},
        operation=operation,
    )


class KeyOnly(BaseModel):
    idempotency_key: str = Key


@router.post("/merchant/v1/authorizations/{authorization_id}/void")
async def merchant_void(authorization_id: str, body: KeyOnly, principal: Merchant, ctx: FintechDep) -> dict[str, Any]:
    client_id = _merchant(principal)

    async def operation(session: Any) -> dict[str, Any]:
        return await cards.void(session, ctx, client_id=client_id, authorization_id=authorization_id)

    return await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{client_id}:void",
        key=body.idempotency_key,
        request={"authorization_id": authorization_id},
        operation=operation,
    )


class MerchantRefundIn(MerchantCaptureIn):
    capture_id: str


@router.post("/merchant/v1/refunds")
async def merchant_refund(body: MerchantRefundIn, principal: Merchant, ctx: FintechDep) -> dict[str, Any]:
    client_id = _merchant(principal)

    async def operation(session: Any) -> dict[str, Any]:
        return await cards.refund(
            session,
            ctx,
            client_id=client_id,
            capture_id=body.capture_id,
            amount_minor=body.amount_minor,
            currency=body.currency,
        )

    return await run_once(
        ctx.db,
        ctx.clock,
        scope=f"{client_id}:refund",
        key=body.idempotency_key,
        request={"capture_id": body.capture_id, "amount": [body.amount_minor, body.currency]},
        operation=operation,
    )
