"""Signing out: RP-initiated logout (`end_session_endpoint`) and identity's own sign-out page. Ending
sessions and telling the clients (back-channel logout) is `identity.session_end`."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from identity import pages
from identity.provider import Provider
from identity.session_end import end_sessions
from identity.sessions import COOKIE
from identity.tokens import unverified_claims

log = logging.getLogger("identity.logout")
router = APIRouter()


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
