"""HTTP: the member's wallet page, and the admin audit and settlement reports (JSON)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from kizuna.kit.auth import CurrentMember, CurrentPrincipal
from kizuna.kit.db import SessionDep
from kizuna.kit.errors import InvalidArgument, PermissionDenied

from points import audit, ledger, store
from points.grpc_api import ledger_of

router = APIRouter()
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _require_admin(principal: Any) -> None:
    if not principal.has_scope("points:admin"):
        raise PermissionDenied("this report needs the points:admin scope")


async def wallet_view(request: Request, session: Any, member_id: str) -> dict[str, Any]:
    runtime = request.app.state.runtime
    settings = runtime.settings
    now = ledger_of(runtime).clock.now()
    balance = await store.balance(session, member_id, now)
    entries = await store.list_entries(session, member_id, 50, "")
    used = await store.services_used(session, member_id, ledger.month_key(now))
    rules = settings.earn_rules()
    others = used[: rules.max_bonus_services + 1]
    bonus_bp = rules.bonus_bp_per_service * max(len(others) - 1, 0) if others else 0
    return {
        "member_id": member_id,
        "balance": {
            "total": balance.total,
            "regular": balance.regular,
            "limited_time": balance.limited_time,
            "pending": balance.pending,
            "debt": balance.debt,
            "earning": await store.earning_pending(session, member_id),
            "expiring_soon": {
                "amount": balance.expiring_soon.amount,
                "expires_at": balance.expiring_soon.expires_at.ToDatetime(tzinfo=UTC).isoformat(),
            }
            if balance.HasField("expiring_soon")
            else None,
        },
        "month": {
            "services_used": [ledger.SERVICE_LABELS.get(s, s) for s in used],
            # The rate a purchase at one of these services earns now: base + a bonus per other service.
            "base_rate_percent": rules.default_base_bp / 100,
            "bonus_rate_percent": bonus_bp / 100,
        },
        "entries": [
            {
                "entry_id": e.entry_id,
                "amount": e.amount,
                "explanation": e.explanation,
                "service": e.source_service,
                "at": e.created_at.ToDatetime(tzinfo=UTC).isoformat(),
            }
            for e in entries.entries
        ],
    }


@router.get("/api/wallet")
async def my_wallet(request: Request, member: CurrentMember, session: SessionDep) -> dict[str, Any]:
    assert member.member_id is not None
    return await wallet_view(request, session, member.member_id)


@router.get("/wallet", response_class=HTMLResponse)
async def wallet_page(request: Request, member: CurrentMember, session: SessionDep) -> HTMLResponse:
    # TODO(kit): sign the member in with kizuna.kit.oidc_client and use the kit's base layout once
    # they land; until then the page takes the member's bearer token like the JSON API.
    assert member.member_id is not None
    view = await wallet_view(request, session, member.member_id)
    return templates.TemplateResponse(request, "wallet.html", view)


@router.get("/admin/audit")
async def admin_audit(principal: CurrentPrincipal, session: SessionDep) -> dict[str, Any]:
    _require_admin(principal)
    return (await audit.audit(session)).as_dict()


@router.get("/admin/settlement")
async def admin_settlement(
    principal: CurrentPrincipal, session: SessionDep, start: datetime, end: datetime
) -> dict[str, Any]:
    _require_admin(principal)
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidArgument("start and end need a time zone, e.g. 2025-01-01T00:00:00Z")
    if end <= start:
        raise InvalidArgument("end must be after start")
    return {"start": start.isoformat(), "end": end.isoformat(), "services": await audit.settlement(session, start, end)}
