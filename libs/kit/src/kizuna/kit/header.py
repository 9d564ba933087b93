"""The live part of the ecosystem header: who is signed in here and their points balance.

Every service with pages answers `GET /_kizuna/me` for its own signed-in member; the shared
layout fills the header from it, so the balance shown anywhere is read from the points ledger at
that moment (with the member's own token), never from a copy.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from kizuna.kit.auth import call_metadata
from kizuna.kit.oidc_client import SignInError, web_sign_in_of
from kizuna.kit.rpc import client_channel
from kizuna.points.v1 import points_pb2, points_pb2_grpc

log = logging.getLogger("kizuna.kit.header")

router = APIRouter(include_in_schema=False)


async def points_balance(points_addr: str, member_id: str, member_token: str) -> int | None:
    """The member's spendable points, or None when points cannot answer right now."""
    try:
        async with client_channel(points_addr, retry_services=["kizuna.points.v1.PointsService"]) as channel:
            reply = await points_pb2_grpc.PointsServiceStub(channel).GetBalance(
                points_pb2.GetBalanceRequest(member_id=member_id), metadata=call_metadata(member_token), timeout=2
            )
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        log.warning("points balance unavailable for the header: %s", code, extra={"code": code})
        return None
    return int(reply.total)


@router.get("/_kizuna/me")
async def me(request: Request) -> JSONResponse:
    rp = web_sign_in_of(request)
    row = await rp.current(request)
    headers = {"Cache-Control": "no-store"}
    if row is None:
        # The page asks identity once per browser (prompt=none) whether the member is signed in
        # there already: single sign-on on every page of every service, not only protected ones.
        checked = bool(request.cookies.get(rp.sso_checked_cookie))
        return JSONResponse({"signed_in": False, "sso_checked": checked}, headers=headers)
    body: dict[str, Any] = {"signed_in": True, "name": row.display_name or row.member_id, "points": None}
    try:
        token = await rp.access_token(row.id)
    except SignInError:
        return JSONResponse({"signed_in": False}, headers=headers)
    body["points"] = await points_balance(request.app.state.runtime.settings.points_addr, row.member_id, token)
    return JSONResponse(body, headers=headers)
