"""Web pages (kit sign-in + ecosystem layout): card, bank, invest. Forms post back here; each form
carries a fresh idempotency key, so a double submit acts once. Actions call the same domain code
as the JSON API; paying with points uses the member's stored access token as their consent."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from kizuna.kit.bounds import Int64
from kizuna.kit.csrf import CsrfChecked
from kizuna.kit.errors import DomainError
from kizuna.kit.flash import Kind, Param, flash
from kizuna.kit.oidc_client import SignedInMember, WebMember
from kizuna.kit.web import format_money as money
from kizuna.kit.web import format_points, page_templates
from sqlmodel.ext.asyncio.session import AsyncSession

from fintech import bank, cards, ledger, lines, payments, securities, statements
from fintech.context import Fintech, fintech_of
from fintech.idempotency import run_once
from fintech.refusals import refusal_words

router = APIRouter(include_in_schema=False)
templates = page_templates(
    Path(__file__).parent / "templates",
    service="fintech",
    card_line=lines.card_line,
    bank_line=lines.bank_line,
    fund_name=lines.fund_name,
)
FormInt = Annotated[Int64, Form()]  # int64: a larger number is a 422, not a database error
FormStr = Annotated[str, Form()]
PathId = Annotated[str, PathParam(min_length=1, max_length=64)]
FormId = Annotated[str, Form(min_length=1, max_length=64)]
FormUnits = Annotated[str, Form(min_length=1, max_length=40)]


def _ctx(request: Request) -> Fintech:
    return fintech_of(request.app.state.runtime)


def _render(request: Request, name: str, member: WebMember, **values: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "member_name": member.display_name or member.member_id,
            "new_key": uuid.uuid4().hex,
            **values,
        },
    )


def _back(request: Request, path: str, message: str, kind: Kind = "success", **params: Param) -> Response:
    """Back to a page with a message for the member (in the session, never in the URL): `message`
    is the catalogue's key, translated on the page that shows it (kizuna.kit.flash)."""
    flash(request, kind, message, **params)
    return RedirectResponse(path, status_code=303)


def _paid(request: Request, path: str, one: str, both: str, bank_minor: int, points: int) -> Response:
    """Back with the message `one` (what was paid, `%(paid)s`: yen or points) or `both`
    (`%(bank)s` and `%(points)s`), so the page that shows it words the whole sentence."""
    if bank_minor and points:
        return _back(request, path, both, bank=money(bank_minor), points=format_points(points))
    return _back(request, path, one, paid=format_points(points) if points else money(bank_minor))


def _refused(request: Request, path: str, exc: DomainError) -> Response:
    key, params = refusal_words(exc.message)
    return _back(request, path, key, "error", **params)


@router.get("/", response_class=HTMLResponse)
@router.get("/card", response_class=HTMLResponse)
async def card_page(request: Request, member: SignedInMember) -> HTMLResponse:
    ctx = _ctx(request)
    async with ctx.db.sessions() as session:
        card = await cards.find_card(session, member.member_id)
        view: dict[str, Any] = {"card": None}
        if card is not None:
            now = ctx.clock.now()
            view = {
                "card": cards.card_summary(card, await cards.available_minor(session, card, now)),
                "owed": await ledger.balance(session, ledger.card_account(card.card_id)),
                "transactions": await cards.transactions(session, card.card_id),
                "statements": await statements.for_member(session, member.member_id),
            }
    return _render(request, "card.html", member, sandbox=ctx.settings.fintech_sandbox, **view)


@router.post("/card/apply", dependencies=[CsrfChecked])
async def apply_page(request: Request, member: SignedInMember, annual_income_minor: FormInt, key: FormStr) -> Response:
    ctx = _ctx(request)
    try:
        issued = await cards.apply_once(ctx, member.member_id, annual_income_minor, key)
    except DomainError as exc:
        return _refused(request, "/card", exc)
    if not issued.card_number:
        return _back(request, "/card", "Your Kizuna Card is issued.")
    # The number is shown on this one page and never stored or redirected through a URL.
    page = _render(request, "issued.html", member, card=issued)
    page.headers["cache-control"] = "no-store"
    return page


@router.post("/card/statements/close-now", dependencies=[CsrfChecked])
async def close_statement_page(request: Request, member: SignedInMember) -> Response:
    """Sandbox only: bill what is posted now instead of waiting for month end."""
    ctx = _ctx(request)
    if not ctx.settings.fintech_sandbox:
        return _back(request, "/card", "Closing a statement on demand is available in the sandbox only.", "warning")
    try:
        async with ctx.db.transaction() as session:
            card = await cards.require_card(session, ctx, member.member_id)
            statement = await statements.close(session, ctx, card.card_id, ctx.clock.now())
    except DomainError as exc:
        return _refused(request, "/card", exc)
    if statement is None:
        return _back(request, "/card", "Nothing to bill yet.", "info")
    return _back(request, "/card", "Your statement is closed.")


@router.post("/card/statements/{statement_id}/pay", dependencies=[CsrfChecked])
async def pay_page(
    request: Request, statement_id: PathId, member: SignedInMember, bank_minor: FormInt, points: FormInt, key: FormStr
) -> Response:
    ctx = _ctx(request)
    try:
        await payments.pay(
            ctx,
            ctx.points,
            member_id=member.member_id,
            member_token=await member.access_token(),
            purpose="card_bill",
            target_id=statement_id,
            bank_minor=bank_minor,
            points=points,
            key=key,
            check=statements.check_bill,
            apply=statements.apply_bill,
            reason="Kizuna Card bill",
        )
    except DomainError as exc:
        return _refused(request, "/card", exc)
    return _paid(
        request,
        "/card",
        "Thank you: %(paid)s paid towards your card bill.",
        "Thank you: %(bank)s and %(points)s paid towards your card bill.",
        bank_minor,
        points,
    )


@router.get("/bank", response_class=HTMLResponse)
async def bank_page(request: Request, member: SignedInMember) -> HTMLResponse:
    ctx = _ctx(request)
    async with ctx.db.transaction() as session:
        await bank.open_account(session, ctx, member.member_id)
    async with ctx.db.sessions() as session:
        account = await bank.require_account(session, member.member_id)
        history = await bank.history(session, member.member_id)
    return _render(
        request,
        "bank.html",
        member,
        balance=account.balance_minor,
        history=history,
        sandbox=ctx.settings.fintech_sandbox,
    )


@router.post("/bank/transfer", dependencies=[CsrfChecked])
async def transfer_page(
    request: Request, member: SignedInMember, to_member_id: FormId, amount_minor: FormInt, key: FormStr
) -> Response:
    ctx = _ctx(request)

    async def operation(session: AsyncSession) -> bank.Transferred:
        return await bank.transfer(session, ctx, member.member_id, to_member_id, amount_minor, ctx.settings.currency)

    try:
        await run_once(
            ctx.db,
            ctx.clock,
            scope=f"{member.member_id}:transfer",
            key=key,
            request={"to": to_member_id, "amount": [amount_minor, ctx.settings.currency]},
            operation=operation,
            result=bank.Transferred,
        )
    except DomainError as exc:
        return _refused(request, "/bank", exc)
    return _back(request, "/bank", "%(amount)s sent.", amount=money(amount_minor))


@router.post("/bank/top-up", dependencies=[CsrfChecked])
async def top_up_page(request: Request, member: SignedInMember, amount_minor: FormInt, key: FormStr) -> Response:
    ctx = _ctx(request)
    if not ctx.settings.fintech_sandbox:
        return _back(request, "/bank", "Top-up is available in the sandbox only.", "warning")

    async def operation(session: AsyncSession) -> bank.ToppedUp:
        return await bank.top_up(session, ctx, member.member_id, amount_minor, ctx.settings.currency)

    try:
        await run_once(
            ctx.db,
            ctx.clock,
            scope=f"{member.member_id}:top-up",
            key=key,
            request={"amount": [amount_minor, ctx.settings.currency]},
            operation=operation,
            result=bank.ToppedUp,
        )
    except DomainError as exc:
        return _refused(request, "/bank", exc)
    return _back(request, "/bank", "%(amount)s added to your account.", amount=money(amount_minor))


@router.get("/invest", response_class=HTMLResponse)
async def invest_page(request: Request, member: SignedInMember) -> HTMLResponse:
    ctx = _ctx(request)
    today = ctx.clock.now().date()
    async with ctx.db.sessions() as session:
        funds = await securities.catalogue(session, today)
        held = await securities.holdings(session, member.member_id, today, ctx.settings.currency)
    return _render(request, "invest.html", member, funds=funds, held=held)


@router.post("/invest/{fund_id}/buy", dependencies=[CsrfChecked])
async def buy_page(
    request: Request, fund_id: PathId, member: SignedInMember, bank_minor: FormInt, points: FormInt, key: FormStr
) -> Response:
    ctx = _ctx(request)
    try:
        await payments.pay(
            ctx,
            ctx.points,
            member_id=member.member_id,
            member_token=await member.access_token(),
            purpose="fund_buy",
            target_id=fund_id,
            bank_minor=bank_minor,
            points=points,
            key=key,
            check=securities.check_fund,
            apply=securities.apply_buy,
            reason="Kizuna fund purchase",
        )
    except DomainError as exc:
        return _refused(request, "/invest", exc)
    return _paid(request, "/invest", "Bought for %(paid)s.", "Bought for %(bank)s and %(points)s.", bank_minor, points)


@router.post("/invest/{fund_id}/sell", dependencies=[CsrfChecked])
async def sell_page(
    request: Request, fund_id: PathId, member: SignedInMember, units: FormUnits, key: FormStr
) -> Response:
    ctx = _ctx(request)
    try:
        units_micro = securities.micro_units(units)

        async def operation(session: AsyncSession) -> securities.Sold:
            return await securities.sell(session, ctx, member.member_id, fund_id, units_micro)

        sold = await run_once(
            ctx.db,
            ctx.clock,
            scope=f"{member.member_id}:fund-sell",
            key=key,
            request={"fund": fund_id, "units": units_micro},
            operation=operation,
            result=securities.Sold,
        )
    except DomainError as exc:
        return _refused(request, "/invest", exc)
    return _back(
        request,
        "/invest",
        "Sold for %(proceeds)s: the money is in your bank account.",
        proceeds=money(sold.proceeds_minor),
    )
