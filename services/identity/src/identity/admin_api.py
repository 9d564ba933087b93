"""The HTTP admin API for client registration, for a service token with scope `identity:admin`
(client credentials). The same rules as `python -m identity register-client` (clients.upsert).

    POST   /admin/clients               register (409 if the id exists); a generated secret is returned once
    PATCH  /admin/clients/{client_id}   change only the fields given (the secret stays unless one is
                                        given or `rotate_secret` is true; scopes stay unless given)
    PUT    /admin/clients/{client_id}   replace: every field must be given (422 otherwise)
    GET    /admin/clients               list;  GET /admin/clients/{client_id}  one
    DELETE /admin/clients/{client_id}   remove the client and revoke every grant it holds

A client cannot change or remove itself (403): an admin client can neither strip nor raise its
own scopes. A client secret given here has at least MIN_SECRET_LENGTH characters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from kizuna.kit.bounds import Text
from kizuna.kit.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from pydantic import AliasChoices, BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlmodel import col, select

from identity.clients import Client, ClientSpec, all_clients, upsert
from identity.context import identity_of
from identity.provider import Provider
from identity.tokens import Grant, publish_revocation, revoke_grant

ADMIN_SCOPE = "identity:admin"
# A secret chosen by the caller must be as hard to guess as a generated one (32 bytes, 43 chars).
MIN_SECRET_LENGTH = 32
MAX_SECRET_LENGTH = 200
router = APIRouter(prefix="/admin", tags=["admin"])


def _provider(request: Request) -> Provider:
    return identity_of(request.app.state.runtime).provider


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
Uri = Annotated[Text, PydanticField(max_length=500)]
Name = Annotated[Text, PydanticField(min_length=1, max_length=100)]


class ClientPublic(BaseModel):
    """A registered client as the admin API shows it (never its secret)."""

    client_id: str = PydanticField(validation_alias=AliasChoices("client_id", "id"))
    name: str
    public: bool
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    grant_types: list[str]
    scopes: list[str]
    first_party: bool
    backchannel_logout_uri: str | None
    created_at: datetime

    @classmethod
    def of(cls, client: Client) -> ClientPublic:
        return cls.model_validate(client, from_attributes=True)


class ClientWithSecretPublic(ClientPublic):
    """A client whose secret was just set or generated: the only answer that carries it."""

    client_secret: str


def _check_secret(secret: str | None) -> None:
    if secret is not None and not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
        raise InvalidArgument(
            f"client_secret must have {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters "
            "(leave it out to have one generated)"
        )


def _not_itself(client_id: str, admin: str, action: str) -> None:
    if client_id == admin:
        raise PermissionDenied(f"a client cannot {action} itself; use another admin client")


async def _save(
    request: Request, spec: ClientSpec, *, create: bool, keep_secret: bool = False
) -> ClientPublic | ClientWithSecretPublic:
    provider = _provider(request)
    async with provider.db.transaction() as session:
        existing = await session.get(Client, spec.client_id)
        if create and existing is not None:
            raise AlreadyExists(f"client {spec.client_id} exists; PATCH /admin/clients/{spec.client_id} changes it")
        kept = existing.secret_hash if existing is not None and keep_secret else None
        client, secret = await upsert(session, spec, provider.now(), provider.scopes)
        if kept is not None:  # PATCH without a new secret: the one the client holds stays valid
            client.secret_hash = kept
            secret = None
            session.add(client)
        body = ClientPublic.of(client)
    provider.forget_client(spec.client_id)
    if secret:
        return ClientWithSecretPublic(**body.model_dump(), client_secret=secret)
    return body


class ClientCreate(ClientSpec):
    """POST: fields left out take the defaults of a new third-party client."""

    model_config = ConfigDict(extra="forbid")


class ClientReplace(BaseModel):
    """PUT: a full replacement, so nothing is reset to a default by omission."""

    model_config = ConfigDict(extra="forbid")

    client_id: str
    client_secret: str | None = PydanticField(description="a new secret, or null to have one generated")
    name: Text
    redirect_uris: list[Uri]
    post_logout_redirect_uris: list[Uri]
    grant_types: list[Name]
    scopes: list[Name]
    first_party: bool
    backchannel_logout_uri: Uri | None
    public: bool


class ClientPatch(BaseModel):
    """PATCH: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    client_secret: str | None = None
    rotate_secret: bool = False
    name: Text | None = None
    redirect_uris: list[Uri] | None = None
    post_logout_redirect_uris: list[Uri] | None = None
    grant_types: list[Name] | None = None
    scopes: list[Name] | None = None
    first_party: bool | None = None
    backchannel_logout_uri: Uri | None = None
    public: bool | None = None


@router.post("/clients", status_code=201)
async def register(request: Request, spec: ClientCreate, _admin: Admin) -> ClientPublic | ClientWithSecretPublic:
    _check_secret(spec.client_secret)
    return await _save(request, ClientSpec(**spec.model_dump()), create=True)


@router.put("/clients/{client_id}")
async def replace(
    request: Request, client_id: str, body: ClientReplace, admin: Admin
) -> ClientPublic | ClientWithSecretPublic:
    if body.client_id != client_id:
        raise InvalidArgument("client_id in the body must match the path")
    _not_itself(client_id, admin, "replace")
    _check_secret(body.client_secret)
    return await _save(request, ClientSpec(**body.model_dump()), create=False)


@router.patch("/clients/{client_id}")
async def change(
    request: Request, client_id: str, body: ClientPatch, admin: Admin
) -> ClientPublic | ClientWithSecretPublic:
    _not_itself(client_id, admin, "change")
    _check_secret(body.client_secret)
    if body.rotate_secret and body.client_secret is not None:
        raise InvalidArgument("give either client_secret or rotate_secret, not both")
    async with _provider(request).db.sessions() as session:
        client = await session.get(Client, client_id)
    if client is None:
        raise NotFound(f"no client {client_id}")
    given = body.model_dump(exclude_unset=True, exclude={"rotate_secret", "client_secret"})
    if "backchannel_logout_uri" not in body.model_fields_set:
        given["backchannel_logout_uri"] = client.backchannel_logout_uri
    current = ClientPublic.of(client).model_dump(exclude={"created_at"})
    merged = {**current, **{k: v for k, v in given.items() if v is not None or k == "backchannel_logout_uri"}}
    becomes_public = bool(merged["public"])
    new_secret = body.client_secret
    keep = not becomes_public and not client.public and new_secret is None and not body.rotate_secret
    spec = ClientSpec(**merged, client_secret=None if becomes_public else new_secret)
    return await _save(request, spec, create=False, keep_secret=keep)


@router.get("/clients")
async def list_clients(request: Request, _admin: Admin) -> list[ClientPublic]:
    async with _provider(request).db.sessions() as session:
        return [ClientPublic.of(c) for c in await all_clients(session)]


@router.get("/clients/{client_id}")
async def get_client(request: Request, client_id: str, _admin: Admin) -> ClientPublic:
    async with _provider(request).db.sessions() as session:
        client = await session.get(Client, client_id)
    if client is None:
        raise NotFound(f"no client {client_id}")
    return ClientPublic.of(client)


@router.delete("/clients/{client_id}", status_code=204)
async def remove(request: Request, client_id: str, admin: Admin) -> Response:
    _not_itself(client_id, admin, "remove")
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
            await revoke_grant(session, grant.id, now, reason="client_removed")
        # Its own client-credentials tokens too: no service accepts any token of a removed client.
        await publish_revocation(session, now, reason="client_removed", client_id=client_id, client_wide=True)
        await session.delete(client)
    provider.forget_client(client_id)
    return Response(status_code=204)
