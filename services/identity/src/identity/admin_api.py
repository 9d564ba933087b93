"""The HTTP admin API for client registration, for a service token with scope `identity:admin`
(client credentials). The same rules as `python -m identity register-client` (clients.upsert).

    POST   /admin/clients               register (409 if the id exists); a generated secret is returned once
    PUT    /admin/clients/{client_id}   register or replace
    GET    /admin/clients               list;  GET /admin/clients/{client_id}  one
    DELETE /admin/clients/{client_id}   remove the client and revoke every grant it holds
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from kizuna.kit.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from sqlmodel import col, select

from identity.clients import Client, ClientSpec, all_clients, upsert
from identity.provider import Provider
from identity.tokens import Grant, revoke_grant

ADMIN_SCOPE = "identity:admin"
router = APIRouter(prefix="/admin", tags=["admin"])


def _provider(request: Request) -> Provider:
    return request.app.state.runtime.state["provider"]  # type: ignore[no-any-return]


async def _admin(request: Request) -> str:
    """The calling client, when its bearer token is a live service token with identity:admin."""
    provider = _provider(request)
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise Unauthenticated("a bearer token is required")
    try:
        claims = provider.issuer.verify(auth[7:].strip(), typ="at+jwt", now=provider.now())
    except ValueError as exc:
        raise Unauthenticated(f"invalid token: {exc}") from None
    if not await provider.access_token_live(claims):
        raise Unauthenticated("invalid token: revoked")
    if claims.get("sub") != claims.get("client_id") or ADMIN_SCOPE not in str(claims.get("scope", "")).split():
        raise PermissionDenied(f"client registration needs a service token with {ADMIN_SCOPE}")
    return str(claims["client_id"])


Admin = Annotated[str, Depends(_admin)]


def public(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.id,
        "name": client.name,
        "public": client.public,
        "redirect_uris": client.redirect_uris,
        "post_logout_redirect_uris": client.post_logout_redirect_uris,
        "grant_types": client.grant_types,
        "scopes": client.scopes,
        "first_party": client.first_party,
        "backchannel_logout_uri": client.backchannel_logout_uri,
        "created_at": client.created_at.isoformat(),
    }


async def _save(request: Request, spec: ClientSpec, *, create: bool) -> dict[str, Any]:
    provider = _provider(request)
    async with provider.db.transaction() as session:
        if create and await session.get(Client, spec.client_id) is not None:
            raise AlreadyExists(f"client {spec.client_id} exists; PUT /admin/clients/{spec.client_id} replaces it")
        client, secret = await upsert(session, spec, provider.now())
        body = public(client)
    provider.forget_client(spec.client_id)
    return {**body, **({"client_secret": secret} if secret else {})}


@router.post("/clients", status_code=201)
async def register(request: Request, spec: ClientSpec, _admin: Admin) -> dict[str, Any]:
    return await _save(request, spec, create=True)


@router.put("/clients/{client_id}")
async def replace(request: Request, client_id: str, spec: ClientSpec, _admin: Admin) -> dict[str, Any]:
    if spec.client_id != client_id:
        raise InvalidArgument("client_id in the body must match the path")
    return await _save(request, spec, create=False)


@router.get("/clients")
async def list_clients(request: Request, _admin: Admin) -> list[dict[str, Any]]:
    async with _provider(request).db.sessions() as session:
        return [public(c) for c in await all_clients(session)]


@router.get("/clients/{client_id}")
async def get_client(request: Request, client_id: str, _admin: Admin) -> dict[str, Any]:
    async with _provider(request).db.sessions() as session:
        client = await session.get(Client, client_id)
    if client is None:
        raise NotFound(f"no client {client_id}")
    return public(client)


@router.delete("/clients/{client_id}", status_code=204)
async def remove(request: Request, client_id: str, admin: Admin) -> Response:
    if client_id == admin:
        raise InvalidArgument("a client cannot remove itself")
    provider = _provider(request)
    now = provider.now()
    async with provider.db.transaction() as session:
        client = await session.get(Client, client_id)
        if client is None:
            raise NotFound(f"no client {client_id}")
        grants = (
            await session.exec(select(Grant).where(Grant.client_id == client_id, col(Grant.revoked_at).is_(None)))
        ).all()
        for grant in grants:
            await revoke_grant(session, grant.id, now)
        await session.delete(client)
    provider.forget_client(client_id)
    return Response(status_code=204)
