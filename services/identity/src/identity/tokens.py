"""Grants, codes and tokens: what identity issued, to whom, and whether it still counts.

- A *grant* is one authorization of one client by one member (or a client on its own behalf);
  every code, access token and refresh token belongs to one, and revoking it revokes them all.
- Access tokens are JWTs (RFC 9068, `typ: at+jwt`) verified locally by every service; identity
  also records their `jti` so that introspection and userinfo can see revocation.
- Codes and refresh tokens are random strings stored only as SHA-256 hashes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from kizuna.identity.v1 import events_pb2
from kizuna.kit.clock import timestamp
from kizuna.kit.db import UTCDateTime
from kizuna.kit.events import publish
from kizuna.kit.revocation import REVOCATION_SUBJECT
from sqlalchemy import Column, String, Text, update
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from identity.authlib_types import AuthorizationCodeMixin, TokenMixin
from identity.keys import ALG, KeyRing


def hash_token(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_opaque() -> str:
    return secrets.token_urlsafe(32)


class Grant(SQLModel, table=True):
    __tablename__ = "identity_grant"

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    client_id: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    member_id: str | None = Field(default=None, sa_column=Column(String(40), index=True))
    session_id: str | None = Field(default=None, sa_column=Column(String(64), index=True))
    scope: str = Field(sa_column=Column(Text, nullable=False))
    auth_time: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class AuthorizationCode(SQLModel, AuthorizationCodeMixin, table=True):
    __tablename__ = "identity_authorization_code"

    code_hash: str = Field(sa_column=Column(String(64), primary_key=True))
    grant_id: str = Field(sa_column=Column(String(40), nullable=False))
    client_id: str = Field(sa_column=Column(String(100), nullable=False))
    member_id: str = Field(sa_column=Column(String(40), nullable=False))
    redirect_uri: str = Field(sa_column=Column(Text, nullable=False))
    scope: str = Field(sa_column=Column(Text, nullable=False))
    nonce: str | None = Field(default=None, sa_column=Column(Text))
    code_challenge: str | None = Field(default=None, sa_column=Column(String(128)))
    code_challenge_method: str | None = Field(default=None, sa_column=Column(String(16)))
    session_id: str | None = Field(default=None, sa_column=Column(String(64)))
    auth_time: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]


class AccessToken(SQLModel, table=True):
    __tablename__ = "identity_access_token"

    jti: str = Field(sa_column=Column(String(40), primary_key=True))
    grant_id: str | None = Field(default=None, sa_column=Column(String(40), index=True))
    client_id: str = Field(sa_column=Column(String(100), nullable=False))
    subject: str = Field(sa_column=Column(String(100), nullable=False))
    scope: str = Field(sa_column=Column(Text, nullable=False))
    issued_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class RefreshToken(SQLModel, table=True):
    __tablename__ = "identity_refresh_token"

    token_hash: str = Field(sa_column=Column(String(64), primary_key=True))
    grant_id: str = Field(sa_column=Column(String(40), nullable=False, index=True))
    client_id: str = Field(sa_column=Column(String(100), nullable=False))
    scope: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    rotated_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # The token this one replaced; a reuse inside the grace period may only be of the latest parent.
    parent_hash: str | None = Field(default=None, sa_column=Column(String(64)))
    # Set when this rotated token was used once more inside the grace period: it may be, once.
    grace_used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))

    def check_client(self, client: Any) -> bool:
        # A refresh token is bound to the client it was issued to.
        return bool(self.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.scope


# Every service keeps a revoked grant, session or token in its deny-list this long: longer than
# any access token identity issues (IDENTITY_ACCESS_TOKEN_SECONDS, 5 minutes by default) and no
# longer than the kit's revocation look-back, so a service that starts still learns it.
REVOCATION_HORIZON = timedelta(minutes=15)


async def publish_revocation(
    session: AsyncSession,
    now: datetime,
    *,
    reason: str,
    grant_id: str = "",
    jti: str = "",
    member_id: str = "",
    member_wide: bool = False,
    client_id: str = "",
    client_wide: bool = False,
) -> str:
    """Stage `identity.access.revoked` in the caller's transaction: every service refuses the
    tokens it names within moments of the commit (kizuna.kit.revocation)."""
    event = events_pb2.AccessRevoked(
        grant_id=grant_id,
        jti=jti,
        member_id=member_id,
        member_wide=member_wide,
        client_id=client_id,
        client_wide=client_wide,
        revoked_at=timestamp(now),
        expires_at=timestamp(now + REVOCATION_HORIZON),
        reason=reason,
    )
    return await publish(session, REVOCATION_SUBJECT, event, member_id=member_id or None)


async def revoke_grant(session: AsyncSession, grant_id: str, now: datetime, *, reason: str = "grant") -> None:
    """Revoke a grant with every access and refresh token issued under it, and tell every service."""
    result = await session.exec(
        update(Grant).where(col(Grant.id) == grant_id, col(Grant.revoked_at).is_(None)).values(revoked_at=now)
    )
    if result.rowcount:
        member_id = (await session.exec(select(Grant.member_id).where(Grant.id == grant_id))).first()
        await publish_revocation(session, now, reason=reason, grant_id=grant_id, member_id=member_id or "")
    await session.exec(
        update(AccessToken)
        .where(col(AccessToken.grant_id) == grant_id, col(AccessToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    await session.exec(
        update(RefreshToken)
        .where(col(RefreshToken.grant_id) == grant_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )


async def live_grants(session: AsyncSession, *, member_id: str) -> list[Grant]:
    rows = await session.exec(select(Grant).where(Grant.member_id == member_id, col(Grant.revoked_at).is_(None)))
    return list(rows.all())


def new_grant_id() -> str:
    return f"grt_{ULID()}"


# ---- JWTs ---------------------------------------------------------------------------------


_ES256 = ec.ECDSA(hashes.SHA256())


class Issuer:
    """Mints and checks the JWTs of this issuer with the key ring."""

    def __init__(self, issuer: str, audience: str, keys: KeyRing) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self._headers: dict[tuple[str, str], bytes] = {}

    def sign(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        """A compact ES256 JWS (RFC 7515/7518 §3.4: the signature is raw r || s, 32 bytes each).

        Signed with `cryptography` directly: it is the same primitive joserfc calls, without its
        per-call header and claims validation, which cost more than the signature itself on the
        token endpoint. Every verifier (joserfc, the kit) checks these tokens in the tests."""
        key = self.keys.signing_key()
        header = self._headers.get((key.kid, typ))
        if header is None:  # one per key and token type: encoded once, not per token
            header = self._headers[(key.kid, typ)] = _b64json({"alg": ALG, "kid": key.kid, "typ": typ})
        signing_input = header + b"." + _b64json(claims)
        der = key.signer.sign(signing_input, _ES256)
        r, s = decode_dss_signature(der)
        signature = base64.urlsafe_b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).rstrip(b"=")
        return (signing_input + b"." + signature).decode()

    def access_token(
        self,
        *,
        subject: str,
        client_id: str,
        scope: str,
        lifetime: int,
        now: datetime,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, str, datetime]:
        """A signed RFC 9068 access token; returns (token, jti, expires_at)."""
        # 128 random bits: unique, and a fraction of a ULID's cost on the token endpoint.
        jti = secrets.token_urlsafe(16)
        iat = int(now.timestamp())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "client_id": client_id,
            "scope": scope,
            "iat": iat,
            "exp": iat + lifetime,
            "jti": jti,
            **(extra or {}),
        }
        return self.sign(claims, typ="at+jwt"), jti, now + timedelta(seconds=lifetime)

    def verify(
        self, token: str, *, typ: str | None = None, audience: str | None = None, now: datetime, check_exp: bool = True
    ) -> dict[str, Any]:
        """Verify a token this issuer signed; raises ValueError with the reason otherwise."""
        try:
            header = json.loads(_b64(token.split(".")[0]))
        except (ValueError, IndexError) as exc:
            raise ValueError("malformed token") from exc
        if not isinstance(header, dict):  # JSON, but `[1]` or `null` is no JOSE header
            raise ValueError("malformed token")
        if header.get("alg") != ALG:
            raise ValueError("unexpected algorithm")
        if typ is not None and header.get("typ") != typ:
            raise ValueError("unexpected token type")
        key = self.keys.public_key(str(header.get("kid", "")))
        if key is None:
            raise ValueError("unknown key id")
        try:
            decoded = jwt.decode(token, KeySet([key]), algorithms=[ALG])
        except JoseError as exc:
            raise ValueError("bad signature") from exc
        claims = dict(decoded.claims)
        if claims.get("iss") != self.issuer:
            raise ValueError("wrong issuer")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if (audience or self.audience) not in auds:
            raise ValueError("wrong audience")
        if check_exp and (not isinstance(claims.get("exp"), int) or claims["exp"] <= now.timestamp()):
            raise ValueError("expired")
        return claims


def _b64json(value: dict[str, Any]) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=")


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT this process just signed (never for tokens from outside)."""
    data: dict[str, Any] = json.loads(_b64(token.split(".")[1]))
    return data


class TokenRecord(TokenMixin):
    """What introspection and revocation see of an access or refresh token."""

    def __init__(
        self,
        kind: str,
        client_id: str,
        scope: str,
        expires_at: datetime,
        revoked: bool,
        now: datetime,
        claims: dict[str, Any],
        key: str,
        grant_id: str | None,
    ) -> None:
        self.kind = kind
        self.client_id = client_id
        self.scope = scope
        self.expires_at = expires_at
        self.revoked = revoked
        self.now = now
        self.claims = claims
        self.key = key
        self.grant_id = grant_id

    def check_client(self, client: Any) -> bool:
        return bool(self.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, int((self.expires_at - self.now).total_seconds()))

    def is_expired(self) -> bool:
        return self.expires_at <= self.now

    def is_revoked(self) -> bool:
        return self.revoked
