"""Signing out of a service's pages: `/auth/logout` (GET: a confirmation form; POST with the CSRF
token: the local session ends, then identity's, which tells every service).

Its own module because it is a page: it builds on the relying party (`oidc_client`), the CSRF
token (`csrf`) and the layout (`web`), which must not import each other in a circle.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from kizuna.kit.bounds import same_secret
from kizuna.kit.csrf import FIELD, csrf_token
from kizuna.kit.oidc_client import WebSession, WebSignIn, web_sign_in_of
from kizuna.kit.web import page_templates

router = APIRouter(prefix="/auth", include_in_schema=False)


def _end_session_redirect(rp: WebSignIn, meta: dict[str, Any], id_token: str | None) -> RedirectResponse:
    params = {"client_id": rp.client_id, "post_logout_redirect_uri": f"{rp.base_url}/"}
    if id_token is not None:
        params["id_token_hint"] = id_token
    response = RedirectResponse(f"{meta['end_session_endpoint']}?{urlencode(params)}", status_code=303)
    response.delete_cookie(rp.session_cookie, path="/")
    return response


def _logout_form(request: Request, row: WebSession, status_code: int = 200) -> Response:
    templates = page_templates()
    return templates.TemplateResponse(
        request,
        "kizuna/signout.html",
        {"title": "Sign out", "member_name": row.display_name, "csrf_token": csrf_token(request)},
        status_code=status_code,
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


@router.get("/logout")
async def logout_form(request: Request) -> Response:
    """A confirmation form: signing out changes state, so it is a POST with a CSRF token (a link or
    an image on another site must not sign the member out)."""
    rp = web_sign_in_of(request)
    current = await rp.current(request)
    if current is None:
        # Nothing to end here; identity asks the member itself (no id_token_hint).
        return _end_session_redirect(rp, await rp.metadata(), None)
    return _logout_form(request, current)


@router.post("/logout")
async def logout(request: Request) -> Response:
    """RP-initiated logout: end the local session, then identity's (which tells every service)."""
    rp = web_sign_in_of(request)
    current = await rp.current(request)
    meta = await rp.metadata()
    if current is None:
        return _end_session_redirect(rp, meta, None)
    given = (await request.form()).get(FIELD)
    if not isinstance(given, str) or not given:
        # A sign-out button without the token (`{{ csrf_field(request) }}`): ask, do not refuse.
        return _logout_form(request, current)
    expected = csrf_token(request)
    if not expected or not same_secret(given, expected):
        return _logout_form(request, current, status_code=403)
    await rp.end_local(web_session_id=current.id)
    return _end_session_redirect(rp, meta, current.id_token)
