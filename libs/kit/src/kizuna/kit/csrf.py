"""CSRF protection for the forms of a signed-in member's pages.

The token is an HMAC of the member's session cookie under the service's session secret: an
attacker's page can make the browser send the cookie but cannot read it, so it cannot forge the
token. Templates put `{{ csrf_field(request) }}` in every form; handlers declare
`dependencies=[CsrfChecked]`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from kizuna.kit.bounds import same_secret
from kizuna.kit.oidc_client import SignedInMember, WebMember, web_sign_in_of
from markupsafe import Markup, escape

FIELD = "csrf_token"


def csrf_token(request: Request) -> str:
    """The token for this browser's session (empty when it has none: the form will be refused)."""
    rp = web_sign_in_of(request)
    cookie = request.cookies.get(rp.session_cookie, "")
    if not cookie:
        return ""
    key = hmac.new(rp.client_secret.encode(), b"kizuna-csrf", hashlib.sha256).digest()
    return hmac.new(key, cookie.encode(), hashlib.sha256).hexdigest()


def csrf_field(request: Request) -> Markup:
    """The hidden form input carrying the token."""
    return Markup(f'<input type="hidden" name="{FIELD}" value="{escape(csrf_token(request))}">')  # noqa: S704


async def verify_csrf(request: Request) -> None:
    """Refuse a state-changing form post whose token does not match the session (403)."""
    expected = csrf_token(request)
    form = await request.form()
    given = form.get(FIELD)
    if not expected or not isinstance(given, str) or not same_secret(given, expected):
        raise HTTPException(status_code=403, detail="the form has expired or did not come from this site; reload it")


CsrfChecked = Depends(verify_csrf)
"""Route dependency: `@router.post(..., dependencies=[CsrfChecked])`."""


async def _form_member(request: Request, member: SignedInMember) -> WebMember:
    await verify_csrf(request)
    return member


FormMember = Annotated[WebMember, Depends(_form_member)]
"""The signed-in member posting a form this site gave them (CSRF-checked)."""
