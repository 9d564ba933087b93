"""Signing out: RP-initiated logout (`end_session_endpoint`), identity's own sign-out, and
back-channel logout (a signed logout token POSTed to every client that took part in the session)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from identity import backchannel, pages
from identity.clients import Client
from identity.provider import Provider
from identity.sessions import COOKIE, OpSession
from identity.tokens import Grant, revoke_grant, unverified_claims

log = logging.getLogger("identity.logout")
router = APIRouter()


async def end_sessions_in(session: AsyncSession, sids: list[str], now: datetime) -> list[str]:
    """In the caller's transaction: end these sessions, revoke their grants (except offline_access
    ones) and record a back-channel logout for every client that took part; returns the deliveries."""
    notices: set[tuple[str, str, str]] = set()  # (client_id, member_id, sid)
    for sid in sids:
        op = await session.get(OpSession, sid)
        if op is None or op.ended_at is not None:
            continue
        op.ended_at = now
        session.add(op)
        grants = (await session.exec(select(Grant).where(Grant.session_id == sid))).all()
        for grant in grants:
            notices.add((grant.client_id, op.member_id, sid))
            if grant.revoked_at is None and "offline_access" not in grant.scope.split():
                await revoke_grant(session, grant.id, now)
    return await _stage_for_clients(session, sorted(notices), now)


async def _stage_for_clients(
    session: AsyncSession, notices: list[tuple[str, str, str | None]], now: datetime
) -> list[str]:
    client_ids = sorted({c for c, _, _ in notices})
    with_uri = {
        c.id
        for c in (await session.exec(select(Client).where(col(Client.id).in_(client_ids)))).all()
        if c.backchannel_logout_uri
    }
    return [
        backchannel.stage(session, client_id=client_id, member_id=member_id, sid=sid, now=now)
        for client_id, member_id, sid in notices
        if client_id in with_uri
    ]


async def end_member_everywhere(session: AsyncSession, member_id: str, now: datetime) -> list[str]:
    """In the caller's transaction: end every session of the member, revoke every grant (offline
    ones too) and record a back-channel logout for every client the member ever authorized."""
    live = (
        await session.exec(select(OpSession).where(OpSession.member_id == member_id, col(OpSession.ended_at).is_(None)))
    ).all()
    staged = await end_sessions_in(session, [op.id for op in live], now)
    grants = (await session.exec(select(Grant).where(Grant.member_id == member_id))).all()
    for grant in grants:
        if grant.revoked_at is None:
            await revoke_grant(session, grant.id, now)
    # Without `sid`: the client ends every local session of this member.
    clients = sorted({g.client_id for g in grants})
    staged += await _stage_for_clients(session, [(c, member_id, None) for c in clients], now)
    return staged


async def end_other_sessions_in(session: AsyncSession, member_id: str, *, keep_sid: str, now: datetime) -> list[str]:
    """In the caller's transaction (a password change): end every session of the member but
    `keep_sid` and revoke every grant not made in `keep_sid` (offline ones too: a refresh token
    obtained with the old password must not outlive it). Returns the back-channel deliveries."""
    others = (
        await session.exec(
            select(OpSession).where(
                OpSession.member_id == member_id, col(OpSession.ended_at).is_(None), OpSession.id != keep_sid
            )
        )
    ).all()
    staged = await end_sessions_in(session, [op.id for op in others], now)
    grants = (
        await session.exec(select(Grant).where(Grant.member_id == member_id, col(Grant.revoked_at).is_(None)))
    ).all()
    for grant in grants:
        if grant.session_id != keep_sid:
            await revoke_grant(session, grant.id, now)
    return staged


async def end_sessions(provider: Provider, sids: list[str]) -> None:
    """End these sessions and tell each client at once (failed deliveries are retried later)."""
    async with provider.db.transaction() as session:
        staged = await end_sessions_in(session, sids, provider.now())
    await backchannel.deliver_due(provider, staged)


async def verified_hint(provider: Provider, hint: str) -> dict[str, Any] | None:
    """The claims of an ID token this OP issued to one of its clients, or None when the hint cannot
    be verified (any more): signed by a key no longer published, another issuer, not an ID token.
    Expiry does not matter here (RP-Initiated Logout 1.0 §2: an expired ID token is a valid hint)."""
    audience = _hinted_audience(hint)
    if not audience or audience == provider.settings.kizuna_audience:
        return None  # an access token's audience, not a client: not an ID token
    try:
        claims = provider.issuer.verify(hint, typ="JWT", audience=audience, now=provider.now(), check_exp=False)
    except ValueError:
        return None
    if claims.get("aud") != audience or await provider.client(audience) is None:
        return None
    return claims


def _hinted_audience(hint: str) -> str | None:
    """The `aud` an ID token hint claims (unverified): ID tokens have exactly one, the client."""
    try:
        audience = unverified_claims(hint).get("aud")
    except (ValueError, IndexError, UnicodeDecodeError, AttributeError):
        return None
    return audience if isinstance(audience, str) and audience else None


@router.api_route("/logout", methods=["GET", "POST"])
async def end_session(request: Request) -> Response:
    """OIDC RP-Initiated Logout 1.0."""
    provider = pages.provider_of(request)
    params = dict(request.query_params)
    if request.method == "POST":
        params.update({k: v for k, v in (await request.form()).items() if isinstance(v, str)})
    hint = params.get("id_token_hint")
    claims = await verified_hint(provider, hint) if hint else None
    # The client whose registered addresses bound post_logout_redirect_uri. A hint that no longer
    # verifies may still name it: that only selects which registration to check the address
    # against (never an open redirect), and the member is asked before anything happens.
    hinted_client = (claims or {}).get("aud") or (_hinted_audience(hint) if hint else None)
    if hinted_client and params.get("client_id") and params["client_id"] != hinted_client:
        return pages.error_page(request, "The sign-out request is not valid (client_id).", 400)
    client_id = params.get("client_id") or hinted_client
    client = await provider.client(str(client_id)) if client_id else None
    post_logout = params.get("post_logout_redirect_uri")
    if post_logout and (client is None or post_logout not in client.post_logout_redirect_uris):
        return pages.error_page(request, "The application asked to return to an address it has not registered.", 400)

    if claims is None:
        # Without a valid id_token_hint a logout could be forced by any site: ask the member first.
        if request.method != "POST" or params.get("confirm") != "yes":
            hidden = [(k, v) for k, v in params.items() if k not in ("csrf_token", "confirm")]
            return pages.render(request, "signout.html", {"title": "Sign out", "hidden": hidden, "action": "/logout"})
        if not pages.csrf_ok(request, params.get("csrf_token")):
            return pages.csrf_failed(request)

    op = await pages.current_session(request)
    sids = []
    if op is not None and (claims is None or claims.get("sub") == op.member_id):
        sids.append(op.id)
    if claims and claims.get("sid") and claims["sid"] not in sids:
        hinted = await provider.op_session(str(claims["sid"]))
        if hinted is not None and hinted.member_id == claims.get("sub"):
            sids.append(hinted.id)
    await end_sessions(provider, sids)
    if post_logout:
        sep = "&" if "?" in post_logout else "?"
        target = post_logout + (sep + urlencode({"state": params["state"]}) if params.get("state") else "")
        response: Response = RedirectResponse(target, status_code=303 if request.method == "POST" else 302)
    else:
        response = pages.render(
            request, "message.html", {"title": "Signed out", "message": "You are signed out of Kizuna."}
        )
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/signout")
async def signout_form(request: Request) -> Response:
    return pages.render(request, "signout.html", {"title": "Sign out", "hidden": [], "action": "/signout"})


@router.post("/signout")
async def signout(request: Request) -> Response:
    form = await request.form()
    token = form.get("csrf_token")
    if not pages.csrf_ok(request, token if isinstance(token, str) else None):
        return pages.csrf_failed(request)
    op = await pages.current_session(request)
    if op is not None:
        await end_sessions(pages.provider_of(request), [op.id])
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
