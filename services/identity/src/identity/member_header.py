"""The live part of the ecosystem header on identity's own pages.

Other services answer `GET /_kizuna/me` from their relying-party session (kizuna.kit.header).
identity is the OP and has no such session: it answers the same JSON for its own session, and
reads the balance from points the way every service does, with a token of the member's, which it
mints for itself here (short-lived, `points:read` only, never stored or handed to the browser).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from kizuna.kit.header import points_balance
from kizuna.kit.points import READ_SCOPE
from pydantic import BaseModel

from identity import pages

router = APIRouter(include_in_schema=False)

# The client the header's token says it was issued to: identity itself, acting for the member.
HEADER_CLIENT_ID = "identity"
# points' GetBalance wants the member's own token with `points:read` (points.grpc_api._may_read).
HEADER_SCOPE = READ_SCOPE
HEADER_TOKEN_SECONDS = 60


class MePublic(BaseModel):
    """What the header shows: the member's name and spendable points (None when points does not
    answer). Signed out, only `signed_in: false`."""

    signed_in: bool
    name: str | None = None
    points: int | None = None


@router.get("/_kizuna/me", response_model_exclude_unset=True)
async def me(request: Request, response: Response) -> MePublic:
    provider = pages.provider_of(request)
    op = await pages.current_session(request)
    member = await provider.member(op.member_id) if op else None
    response.headers["Cache-Control"] = "no-store"
    if member is None:
        # No `sso_checked`: the page must not try a silent sign-in at the OP itself.
        return MePublic(signed_in=False)
    token, _jti, _exp = provider.issuer.access_token(
        subject=member.id,
        client_id=HEADER_CLIENT_ID,
        scope=HEADER_SCOPE,
        lifetime=HEADER_TOKEN_SECONDS,
        now=provider.now(),
    )
    points = await points_balance(provider.settings.points_addr, member.id, token)
    return MePublic(signed_in=True, name=member.display_name, points=points)


@router.get("/auth/logout")
async def header_sign_out(request: Request) -> RedirectResponse:
    """The header's "Sign out" link points every service at its `/auth/logout`; at identity that
    is its own sign-out page (which asks first)."""
    return RedirectResponse("/signout", status_code=302)
