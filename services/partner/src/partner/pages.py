"""partner's pages on the kit layout: the member's point card (its rotating code, get or revoke
it) and what they bought at partner stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from kizuna.kit.csrf import FormMember
from kizuna.kit.errors import DomainError, Unauthenticated
from kizuna.kit.flash import flash
from kizuna.kit.i18n import gettext as _
from kizuna.kit.oidc_client import MaybeMember, SignedInMember, WebSession
from kizuna.kit.web import page_templates
from kizuna.kit.web.wording import words_for_member
from sqlmodel import col, select

from partner import cards, codes, partners, settlement
from partner.context import ContextDep
from partner.models import Sale, Store

templates = page_templates(Path(__file__).parent / "templates", service="partner")
router = APIRouter(include_in_schema=False)


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    member = context.get("member")
    context.setdefault("member_name", member.display_name if member else None)
    return templates.TemplateResponse(request, name, context)


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, member: MaybeMember) -> HTMLResponse:
    return _page(request, "partner/index.html", title=_("Partner stores"), member=member)


@router.get("/card", response_class=HTMLResponse)
async def card_page(request: Request, member: SignedInMember, context: ContextDep) -> HTMLResponse:
    async with context.db.sessions() as session:
        card = await cards.of_member(session, member.member_id)
    now = context.clock.now()
    code = cards.current_code(card, now) if card else None
    return _page(
        request,
        "partner/card.html",
        title=_("Your point card"),
        member=member,
        card=card,
        code=code,
        qr=codes.qr_svg(code) if code else None,
        step=codes.STEP,
    )


@router.post("/card/enroll")
async def enroll(request: Request, member: FormMember, context: ContextDep) -> Response:
    await member.access_token()  # fresh tokens of this sign-in
    async with context.db.transaction() as session:
        web = await session.get(WebSession, member.session_id)
        if web is None:
            return RedirectResponse("/auth/login?next=/card", status_code=303)
        await cards.enroll(
            session,
            member.member_id,
            access_token=web.access_token,
            refresh_token=web.refresh_token or "",
            access_expires_at=web.access_expires_at,
            now=context.clock.now(),
        )
    flash(request, "success", "Your point card is ready. Show the code at the till to earn and spend points.")
    return RedirectResponse("/card", status_code=303)


@router.post("/card/revoke")
async def revoke(request: Request, member: FormMember, context: ContextDep) -> Response:
    async with context.db.transaction() as session:
        revoked = await cards.revoke(session, member.member_id)
    flash(
        request,
        "success" if revoked else "warning",
        "Your point card is revoked: its codes no longer work." if revoked else "You had no point card.",
    )
    return RedirectResponse("/card", status_code=303)


@router.get("/statement", response_class=HTMLResponse)
async def statement_page(request: Request, context: ContextDep, month: str = "") -> Response:
    """The partner's monthly statement, for the partner's staff: the browser asks for the
    partner's id and secret (HTTP Basic), as a till sends them."""
    try:
        async with context.db.sessions() as session:
            partner = await partners.authenticate_basic(session, request.headers.get("authorization", ""))
    except Unauthenticated:
        return HTMLResponse(
            _("Sign in with your partner ID and secret."),
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="Kizuna partner", charset="UTF-8"'},
        )
    chosen = month or context.clock.now().strftime("%Y-%m")
    try:
        async with context.db.sessions() as session:
            result = await settlement.statement(session, partner, chosen)
            stores = (await session.exec(select(Store).where(col(Store.partner_id) == partner.id))).all()
    except DomainError as exc:
        key, params = words_for_member(exc.message)
        flash(request, "error", key, **params)
        return RedirectResponse("/statement", status_code=303)
    return _page(
        request, "partner/statement.html", title=_("Statement"), statement=result, partner=partner, stores=stores
    )


@router.get("/purchases", response_class=HTMLResponse)
async def purchases(request: Request, member: SignedInMember, context: ContextDep) -> HTMLResponse:
    async with context.db.sessions() as session:
        rows = (
            await session.exec(
                select(Sale)
                .where(col(Sale.member_id) == member.member_id)
                .order_by(col(Sale.created_at).desc())
                .limit(100)
            )
        ).all()
    return _page(request, "partner/purchases.html", title=_("At partner stores"), member=member, sales=rows)
