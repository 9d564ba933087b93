"""HTTP: the member's wallet page (kit sign-in and layout), its JSON twin for API clients, and the
admin audit and settlement reports (JSON, scope points:admin)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse
from kizuna.kit import i18n, web
from kizuna.kit.auth import Principal, any_scope, member_scope
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import InvalidArgument
from kizuna.kit.oidc_client import SignedInMember
from pydantic import BaseModel
from sqlmodel.ext.asyncio.session import AsyncSession

from points import audit, balances, campaigns, explain, ledger, rewards
from points.grpc_api import ledger_of

router = APIRouter()
templates = web.page_templates(Path(__file__).parent / "templates", service="points")


# The audit and settlement reports: any token (an operator's or a service's) with points:admin.
Admin = Annotated[Principal, Depends(any_scope("points:admin"))]


class ExpiringPublic(BaseModel):
    amount: int
    expires_at: str


class BalancePublic(BaseModel):
    total: int
    regular: int
    limited_time: int
    pending: int
    debt: int
    earning: int
    expiring_soon: ExpiringPublic | None


class RatePublic(BaseModel):
    service: str
    rate_percent: float
    base_percent: float
    multiplier: float
    thanks_to: list[str]


class MonthPublic(BaseModel):
    month: str
    # The services the member earned at this month: each raises the rate at the others.
    services_used: list[str]
    rates: list[RatePublic]


class EntryPublic(BaseModel):
    """A line of the history: a posted entry, or (first) an open hold or a pending earning."""

    entry_id: str
    kind: balances.EntryKind
    amount: int
    # In the wallet's locale.
    explanation: str
    # The service's label, and its name and reference for linking to the order or booking.
    service: str
    source_service: str
    source_ref: str
    at: str
    # A hold: when it lapses if not taken; an earning: when it is expected to be granted, if known.
    until: str | None


class WalletPublic(BaseModel):
    member_id: str
    locale: str
    balance: BalancePublic
    month: MonthPublic
    entries: list[EntryPublic]


async def wallet_view(request: Request, session: AsyncSession, member_id: str, locale: str) -> WalletPublic:
    runtime = request.app.state.runtime
    rules = runtime.settings.earn_rules()
    now = ledger_of(runtime).clock.now()
    balance = await balances.get_balance(runtime.db, member_id, now)
    speaker = explain.Speaker(locale, rules.label)
    history = await balances.list_entries(await session.connection(), member_id, 50, "", now=now, speaker=speaker)
    used = await rewards.services_used(session, member_id, ledger.month_key(now))
    rates = ledger.month_rates(rules, [e.service for e in runtime.settings.kizuna_earners], used)

    def label(service: str) -> str:
        return speaker.place(service)

    soon = balance.expiring_soon
    return WalletPublic(
        member_id=member_id,
        locale=locale,
        balance=BalancePublic(
            total=balance.total,
            regular=balance.regular,
            limited_time=balance.limited_time,
            pending=balance.pending,
            debt=balance.debt,
            earning=balance.earning,
            expiring_soon=ExpiringPublic(amount=soon.amount, expires_at=soon.expires_at.isoformat())
            if soon is not None
            else None,
        ),
        month=MonthPublic(
            month=ledger.month_key(now),
            services_used=[label(s) for s in used],
            rates=[
                RatePublic(
                    service=label(r.service),
                    rate_percent=r.rate_bp / 100,
                    base_percent=r.base_bp / 100,
                    multiplier=round(r.multiplier, 2),
                    thanks_to=[label(s) for s in r.others],
                )
                for r in rates
            ],
        ),
        entries=[
            EntryPublic(
                entry_id=line.entry_id,
                kind=line.kind,
                amount=line.amount,
                explanation=line.explanation,
                service=label(line.source_service),
                source_service=line.source_service,
                source_ref=line.source_ref,
                at=line.created_at.isoformat(),
                until=line.until.isoformat() if line.until is not None else None,
            )
            for line in history.lines
        ],
    )


@router.get("/api/wallet")
async def my_wallet(
    request: Request,
    member: Annotated[Principal, Depends(member_scope("points:read"))],
    session: SessionDep,
    locale: Annotated[Literal["en", "ja"] | None, Query()] = None,
) -> WalletPublic:
    """The wallet for API clients (the member's bearer token); explanations in `locale` (default:
    the request's language, from the kz_lang cookie or Accept-Language)."""
    assert member.member_id is not None
    return await wallet_view(request, session, member.member_id, locale or i18n.language())


@router.get("/", response_class=HTMLResponse)
@router.get("/wallet", response_class=HTMLResponse)
async def wallet_page(request: Request, member: SignedInMember, session: SessionDep) -> HTMLResponse:
    view = await wallet_view(request, session, member.member_id, i18n.language())
    context = {
        "balance": view.balance,
        "month": view.month,
        "entries": view.entries,
        "title": "Your points",
        "member_name": member.display_name or member.member_id,
        "points_balance": view.balance.total,
    }
    return templates.TemplateResponse(request, "wallet.html", context, headers={"Cache-Control": "no-store"})


class AuditPublic(BaseModel):
    """The ledger's invariants, checked from the stored rows (`ok` with no problems when sound)."""

    ok: bool
    problems: list[str]
    issued: int
    clawed_back: int
    redeemed: int
    expired: int
    outstanding: int
    entries: int


class SettlementLinePublic(BaseModel):
    service: str
    issued: int
    clawed_back: int
    redeemed: int
    refunded: int
    net_issued: int
    net_redeemed: int


class SettlementPublic(BaseModel):
    start: str
    end: str
    services: list[SettlementLinePublic]


class CampaignPublic(BaseModel):
    id: str
    name: str
    kind: str
    services: list[str]
    starts_at: str
    ends_at: str
    points_expire_at: str
    multiplier: float
    fixed_bonus: int
    audience: str
    new_member_days: int


class CampaignsPublic(BaseModel):
    campaigns: list[CampaignPublic]


@router.get("/admin/audit")
async def admin_audit(principal: Admin, session: SessionDep) -> AuditPublic:
    return AuditPublic.model_validate((await audit.audit(session)).as_dict())


@router.get("/admin/settlement")
async def admin_settlement(principal: Admin, session: SessionDep, start: datetime, end: datetime) -> SettlementPublic:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidArgument("start and end need a time zone, e.g. 2025-01-01T00:00:00Z")
    if end <= start:
        raise InvalidArgument("end must be after start")
    lines = [SettlementLinePublic.model_validate(line) for line in await audit.settlement(session, start, end)]
    return SettlementPublic(start=start.isoformat(), end=end.isoformat(), services=lines)


# Campaigns as data (admin, scope points:admin).


@router.post("/admin/campaigns", status_code=201)
async def create_campaign(
    request: Request, principal: Admin, session: SessionDep, campaign: Annotated[campaigns.NewCampaign, Body()]
) -> CampaignPublic:
    runtime = request.app.state.runtime
    settings = runtime.settings
    now = ledger_of(runtime).clock.now()
    earners = [e.service for e in settings.kizuna_earners]
    row = await campaigns.create(session, campaign, now, earners, settings.max_credit_points)
    await session.commit()
    return CampaignPublic.model_validate(campaigns.view(row))


@router.get("/admin/campaigns")
async def list_campaigns(principal: Admin, session: SessionDep) -> CampaignsPublic:
    rows = await campaigns.all_campaigns(session)
    return CampaignsPublic(campaigns=[CampaignPublic.model_validate(campaigns.view(r)) for r in rows])
