"""OAuth clients: every ecosystem service is a confidential first-party client, registered from
configuration at start (`KIZUNA_CLIENTS`); others are registered with the admin command.
Third-party clients need the member's consent, which is remembered and revocable.

`KIZUNA_CLIENTS` is a JSON list of objects:
  {"client_id": "shop", "client_secret": "...", "name": "Shop",
   "redirect_uris": ["https://shop.example/auth/callback"],
   "post_logout_redirect_uris": ["https://shop.example/"],
   "backchannel_logout_uri": "http://shop:8002/auth/backchannel-logout",
   "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
   "scopes": ["openid", "profile", "email", "offline_access", "points:read", "points:credit"],
   "first_party": true}
A client without `client_secret` is public (PKCE S256 required, no client authentication).
Addresses must be https (or loopback), except the back-channel logout URI of a declared service,
which identity calls itself: it may be plain http at exactly that service's in-cluster address
(`KIZUNA_INTERNAL_LINKS`), as the public host is out of a pod's reach.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from kizuna.kit.db import Database, UTCDateTime
from kizuna.kit.errors import InvalidArgument
from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import Boolean, Column, String
from sqlmodel import JSON, Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from identity.authlib_types import ClientMixin

# identity's own scopes (OpenID Connect); every other scope comes from the services' declarations.
OIDC_SCOPES = {
    "openid": "Know who you are (your member ID)",
    "profile": "See your display name",
    "email": "See your email address",
    "offline_access": "Keep access while you are away",
}


@dataclass(frozen=True)
class ScopeCatalogue:
    """Every scope identity issues: its own OIDC scopes and those the declared services define
    (`KIZUNA_SCOPES`, derived from the declarations by make up and the manifests). A member may
    grant an app only `member` scopes; the others are for declared ecosystem services."""

    descriptions: dict[str, str]
    member: frozenset[str]

    @classmethod
    def from_json(cls, raw: str) -> ScopeCatalogue:
        declared: dict[str, dict[str, Any]] = json.loads(raw) if raw.strip() else {}
        if not isinstance(declared, dict):
            raise ValueError("KIZUNA_SCOPES must be a JSON object of scope -> {description, member}")
        descriptions = dict(OIDC_SCOPES)
        member = set(OIDC_SCOPES)
        for scope, info in declared.items():
            descriptions[scope] = str(info.get("description") or scope)
            if info.get("member"):
                member.add(scope)
        return cls(descriptions, frozenset(member))

    @property
    def all(self) -> list[str]:
        return sorted(self.descriptions)

    def describe(self, scope: str) -> str:
        return self.descriptions.get(scope, scope)


GRANT_TYPES = {"authorization_code", "refresh_token", "client_credentials"}


class Client(SQLModel, ClientMixin, table=True):
    __tablename__ = "identity_client"

    id: str = Field(sa_column=Column(String(100), primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    secret_hash: str | None = Field(default=None, sa_column=Column(String(100)))
    redirect_uris: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    post_logout_redirect_uris: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    grant_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    first_party: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    backchannel_logout_uri: str | None = Field(default=None, sa_column=Column(String(500)))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))

    # ---- Authlib's ClientMixin ----------------------------------------------------------
    @property
    def public(self) -> bool:
        return self.secret_hash is None

    def get_client_id(self) -> str:
        return self.id

    def get_default_redirect_uri(self) -> str | None:
        # Never guess: a request without redirect_uri is valid only with exactly one registered.
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.scopes)
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string match (OAuth 2.0 Security BCP): no prefix, port or query leeway.
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return hmac.compare_digest(self.secret_hash, hash_secret(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "client_credentials" and self.public:
            return False
        return grant_type in self.grant_types


class Consent(SQLModel, table=True):
    __tablename__ = "identity_consent"

    member_id: str = Field(sa_column=Column(String(40), primary_key=True))
    client_id: str = Field(sa_column=Column(String(100), primary_key=True))
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    granted_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class ClientSpec(BaseModel):
    """A client registration as configuration or the admin command gives it."""

    client_id: str = PydanticField(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    client_secret: str | None = None
    name: str = ""
    redirect_uris: list[str] = []
    post_logout_redirect_uris: list[str] = []
    grant_types: list[str] = ["authorization_code", "refresh_token", "client_credentials"]
    scopes: list[str] = ["openid", "profile", "email", "offline_access", "points:read"]
    first_party: bool = False
    backchannel_logout_uri: str | None = None
    public: bool = False


def hash_secret(secret: str) -> str:
    # Client secrets are high-entropy random strings, so a fast hash suffices (unlike passwords).
    return hashlib.sha256(secret.encode()).hexdigest()


def in_cluster_links(raw: str) -> dict[str, str]:
    """`KIZUNA_INTERNAL_LINKS`: each declared service's in-cluster base URL (its Service), by name."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"KIZUNA_INTERNAL_LINKS is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("KIZUNA_INTERNAL_LINKS must be a JSON object of service -> URL")
    return {str(name): url for name, url in value.items()}


def _in_cluster_backchannel(spec: ClientSpec, uri: str, in_cluster: Mapping[str, str]) -> bool:
    """A plain-http back-channel logout URI is accepted only at the client's own in-cluster
    address: a first-party client whose id is a declared service, on exactly the scheme, host and
    port of that service's in-cluster URL (`KIZUNA_INTERNAL_LINKS`, set by the operator's
    manifests, never by the registration itself). Any other http URI stays refused."""
    base = in_cluster.get(spec.client_id)
    if not spec.first_party or not base:
        return False
    target, own = urlsplit(uri), urlsplit(base)
    return (
        target.scheme == own.scheme == "http"
        and bool(own.hostname)
        and target.netloc == own.netloc
        and not target.fragment
        and target.path.startswith("/")
    )


def _validate(spec: ClientSpec, known_scopes: ScopeCatalogue, in_cluster: Mapping[str, str] | None = None) -> None:
    if spec.client_id.startswith("mbr_"):
        # A service token's sub is its client id; it must never look like a member's.
        raise InvalidArgument("client ids must not start with mbr_")
    unknown = set(spec.grant_types) - GRANT_TYPES
    if unknown:
        raise InvalidArgument(f"unsupported grant types: {sorted(unknown)}")
    bad_scopes = set(spec.scopes) - set(known_scopes.all)
    if bad_scopes:
        raise InvalidArgument(f"unknown scopes: {sorted(bad_scopes)}")
    service_only = set(spec.scopes) - known_scopes.member
    if not spec.first_party and service_only:
        # Service scopes (crediting points, reading any member, exports, administration) are for
        # the ecosystem's declared services only; a third-party app gets what members consent to.
        raise InvalidArgument(f"a third-party client cannot hold service scopes: {sorted(service_only)}")
    for uri in [*spec.redirect_uris, *spec.post_logout_redirect_uris]:
        if not _https_or_loopback(uri):
            raise InvalidArgument(f"redirect URIs must be https (or loopback) without fragment: {uri}")
    backchannel = spec.backchannel_logout_uri
    if (
        backchannel
        and not _https_or_loopback(backchannel)
        and not _in_cluster_backchannel(spec, backchannel, in_cluster or {})
    ):
        raise InvalidArgument(
            "the back-channel logout URI must be https (or loopback), or the client's own in-cluster"
            f" address, without fragment: {backchannel}"
        )


def _https_or_loopback(uri: str) -> bool:
    return uri.startswith(("https://", "http://127.0.0.1", "http://localhost")) and "#" not in uri


async def upsert(
    session: AsyncSession,
    spec: ClientSpec,
    now: datetime,
    known_scopes: ScopeCatalogue,
    in_cluster: Mapping[str, str] | None = None,
) -> tuple[Client, str | None]:
    """Create or update a client; returns it and the secret when one was generated. `in_cluster`:
    the declared services' in-cluster URLs, where their back-channel logout may be plain http."""
    _validate(spec, known_scopes, in_cluster)
    generated = None
    secret = spec.client_secret
    if secret is None and not spec.public:
        secret = generated = secrets.token_urlsafe(32)
    client = await session.get(Client, spec.client_id)
    if client is None:
        client = Client(id=spec.client_id, name=spec.name or spec.client_id, created_at=now)
    client.name = spec.name or spec.client_id
    client.secret_hash = hash_secret(secret) if secret is not None else None
    client.redirect_uris = list(spec.redirect_uris)
    client.post_logout_redirect_uris = list(spec.post_logout_redirect_uris)
    client.grant_types = list(spec.grant_types)
    client.scopes = list(spec.scopes)
    client.first_party = spec.first_party
    client.backchannel_logout_uri = spec.backchannel_logout_uri
    session.add(client)
    return client, generated


async def register_configured(
    db: Database, raw: str, now: datetime, known_scopes: ScopeCatalogue, in_cluster: Mapping[str, str] | None = None
) -> list[str]:
    """Upsert the clients of `KIZUNA_CLIENTS` (first-party unless said otherwise); a declared
    service's back-channel logout may be at its in-cluster URL (`in_cluster`)."""
    if not raw.strip():
        return []
    items: list[dict[str, Any]] = json.loads(raw)
    ids = []
    async with db.transaction() as session:
        for item in items:
            spec = ClientSpec.model_validate({"first_party": True, **item})
            if spec.client_secret is None and not spec.public:
                raise SystemExit(f"KIZUNA_CLIENTS: client {spec.client_id} needs client_secret (or public: true)")
            await upsert(session, spec, now, known_scopes, in_cluster)
            ids.append(spec.client_id)
    return ids


async def consent_covers(session: AsyncSession, member_id: str, client_id: str, scopes: list[str]) -> bool:
    consent = await session.get(Consent, (member_id, client_id))
    return consent is not None and set(scopes) <= set(consent.scopes)


async def remember_consent(
    session: AsyncSession, member_id: str, client_id: str, scopes: list[str], now: datetime
) -> None:
    consent = await session.get(Consent, (member_id, client_id))
    if consent is None:
        consent = Consent(member_id=member_id, client_id=client_id, scopes=[], granted_at=now)
    consent.scopes = sorted(set(consent.scopes) | set(scopes))
    consent.granted_at = now
    session.add(consent)


async def all_clients(session: AsyncSession) -> list[Client]:
    return list((await session.exec(select(Client).order_by(col(Client.id)))).all())
