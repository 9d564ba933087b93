"""Token verification for resource servers, and service tokens for calls between services.

Member and service tokens are JWT access tokens (RFC 9068) signed by identity. Every service
verifies them locally against identity's JWKS, cached and refetched only when a token names an
unknown `kid` (with a floor between refetches), so no request calls identity.

Over gRPC, `authorization: Bearer <token>` says who calls (a service's client-credentials token,
or a member's own token); `x-kizuna-member-token` carries the member's token when a service acts
for a member. Handlers read both with `current_call()` and check them with `require_*`.

Every REST route and gRPC method names the scope it needs: `member_scope("fintech:pay")` (a
FastAPI dependency), `CallAuth.require_member(...)` / `require_service_scope(...)` in a servicer.
A valid token without the scope is refused with 403 `insufficient_scope` (RFC 6750 §3.1) or
PERMISSION_DENIED.

Revocation: identity publishes `identity.access.revoked` whenever it ends access early (a grant,
a session, a member, one token); `RevocationFeed` (run by every service) feeds those events into
the verifier's bounded `DenyList`, so a revoked token is refused everywhere within moments
rather than when it expires.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import grpc
import httpx
from fastapi import Depends, Request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from kizuna.kit import outbound
from kizuna.kit.errors import InsufficientScope, PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger("kizuna.kit.auth")

ALLOWED_ALGORITHMS = ("ES256", "RS256")
MEMBER_TOKEN_METADATA = "x-kizuna-member-token"  # noqa: S105 (a header name)


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    client_id: str
    scopes: frozenset[str]
    claims: dict[str, Any] = field(repr=False, hash=False, compare=False)
    token: str = field(repr=False, hash=False, compare=False)

    @property
    def is_service(self) -> bool:
        """A client-credentials token: the client acts for itself (`sub` == `client_id`)."""
        return self.subject == self.client_id

    @property
    def member_id(self) -> str | None:
        """The member this token was issued for, or None for a service token."""
        return None if self.is_service else self.subject

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def grant_id(self) -> str | None:
        """The authorization (identity's grant) this token was issued under, if any."""
        value = self.claims.get("grant_id")
        return value if isinstance(value, str) and value else None

    @property
    def session_id(self) -> str | None:
        """The sign-in session at identity this token descends from, if any."""
        value = self.claims.get("sid")
        return value if isinstance(value, str) and value else None

    def require_scope(self, *scopes: str) -> Principal:
        """This token must carry one of `scopes`, else `InsufficientScope`."""
        if not any(s in self.scopes for s in scopes):
            raise InsufficientScope(scopes)
        return self


class InvalidToken(Unauthenticated):
    """A bearer token that is missing, malformed, forged, expired or revoked (RFC 6750 §3)."""

    @property
    def headers(self) -> dict[str, str]:
        description = self.message.replace('"', "'")
        return {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'}


_DENIED_BECAUSE = {"grant": "grant", "sid": "session", "jti": "token", "member": "member", "client": "client"}


class DenyList:
    """Revoked grants, sessions, tokens and member-wide cut-offs, each kept until the tokens it
    names would have expired anyway. Bounded: past `max_entries` the entries that expire soonest
    go first (their tokens are the closest to being refused for expiry)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        # key ("grant:<id>", "sid:<id>", "jti:<id>", "member:<id>", "client:<id>")
        #   -> (expires_at, issued_up_to)
        self._entries: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: str, *, expires_at: float, issued_up_to: float = float("inf")) -> None:
        """Deny tokens matching `key` (issued no later than `issued_up_to`) until `expires_at`."""
        old = self._entries.get(key)
        if old is not None:
            expires_at = max(expires_at, old[0])
            issued_up_to = max(issued_up_to, old[1])
        self._entries[key] = (expires_at, issued_up_to)
        if len(self._entries) > self.max_entries:
            self.prune(time.time())
        while len(self._entries) > self.max_entries:
            soonest = min(self._entries, key=lambda k: self._entries[k][0])
            log.warning("revocation deny-list full; dropping the entry that expires soonest")
            del self._entries[soonest]

    def prune(self, now: float) -> None:
        for key in [k for k, (exp, _) in self._entries.items() if exp <= now]:
            del self._entries[key]

    def denies(self, claims: dict[str, Any], now: float) -> str | None:
        """Why a token with `claims` is revoked, or None."""
        if not self._entries:
            return None
        iat = claims.get("iat")
        issued = float(iat) if isinstance(iat, int | float) else float("-inf")
        for kind, claim in (
            ("grant", "grant_id"),
            ("sid", "sid"),
            ("jti", "jti"),
            ("member", "sub"),
            ("client", "client_id"),
        ):
            value = claims.get(claim)
            if not isinstance(value, str) or not value:
                continue
            entry = self._entries.get(f"{kind}:{value}")
            if entry is not None and entry[0] > now and issued <= entry[1]:
                return _DENIED_BECAUSE[kind]
        return None


def _b64json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class TokenVerifier:
    """Verifies access tokens: signature (ES256/RS256 with a known `kid`), `typ`, issuer, audience, expiry."""

    def __init__(
        self,
        issuer: str,
        audience: str = "kizuna",
        *,
        leeway_seconds: int = 30,
        refetch_floor_seconds: float = 30.0,
        http: httpx.AsyncClient | None = None,
        jwks_url: str | None = None,
        deny_list: DenyList | None = None,
        cache_size: int = 10_000,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.deny_list = deny_list if deny_list is not None else DenyList()
        self.audience = audience
        self.leeway = leeway_seconds
        self.refetch_floor = refetch_floor_seconds
        self._http = http
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._jwks_uri: str | None = jwks_url
        # Tokens already verified, by their SHA-256: a caller sends the same token on every call
        # until it expires, and checking its signature again costs more than the rest of the call's
        # authorization. Each hit still checks expiry and the deny-list; new keys empty it.
        self.cache_size = cache_size
        self._verified: dict[bytes, tuple[Principal, float]] = {}

    async def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = outbound.async_client(timeout=5)
        return self._http

    async def _discover(self) -> str:
        if self._jwks_uri is None:
            client = await self._client()
            resp = await client.get(f"{self.issuer}/.well-known/openid-configuration")
            resp.raise_for_status()
            meta = resp.json()
            if meta.get("issuer", "").rstrip("/") != self.issuer:
                raise Unavailable("discovery document names another issuer")
            self._jwks_uri = str(meta["jwks_uri"])
        return self._jwks_uri

    async def refresh_keys(self, *, force: bool = False) -> None:
        """Fetch the JWKS (at most once per floor interval unless forced)."""
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < self.refetch_floor:
                return
            client = await self._client()
            resp = await client.get(await self._discover())
            resp.raise_for_status()
            data = resp.json()
            self._keys = KeySet.import_key_set(data)
            self._kids = {k["kid"] for k in data.get("keys", []) if "kid" in k}
            self._verified.clear()
            self._fetched_at = time.monotonic()

    async def check_reachable(self) -> None:
        """For readiness: the JWKS can be (or already was) fetched."""
        if self._keys is None:
            await self.refresh_keys(force=True)

    async def verify(self, token: str, *, now: float | None = None) -> Principal:
        """Verify an access token or raise `Unauthenticated` saying why."""
        moment = float(now if now is not None else time.time())
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            principal, valid_until = cached
            if moment < valid_until:
                revoked = self.deny_list.denies(principal.claims, moment)
                if revoked is not None:
                    raise InvalidToken(f"token revoked ({revoked})")
                return principal
            del self._verified[digest]
        principal = await self._verify_fully(token, moment)
        self._remember(digest, principal, moment)
        return principal

    def _remember(self, digest: bytes, principal: Principal, now: float) -> None:
        """Keep a verified token until its `exp` (plus the leeway verification allows); bounded:
        when full, expired entries go first, then the oldest."""
        exp = principal.claims.get("exp")
        if not isinstance(exp, int | float) or self.cache_size <= 0:
            return
        if len(self._verified) >= self.cache_size:
            for key in [k for k, (_, until) in self._verified.items() if until <= now]:
                del self._verified[key]
            while len(self._verified) >= self.cache_size:
                del self._verified[next(iter(self._verified))]
        self._verified[digest] = (principal, float(exp) + self.leeway)

    async def _verify_fully(self, token: str, now: float) -> Principal:
        try:
            header_b64, _payload, _sig = token.split(".")
            header = _b64json(header_b64)
        except ValueError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise InvalidToken(f"token algorithm {alg!r} is not accepted")
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise InvalidToken("not an access token (typ must be at+jwt)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token has no kid")
        if kid not in self._kids:
            try:
                await self.refresh_keys()
            except httpx.HTTPError as exc:
                raise Unavailable(f"cannot fetch signing keys: {type(exc).__name__}") from exc
        if kid not in self._kids or self._keys is None:
            raise InvalidToken("token signed with an unknown key")
        try:
            decoded = jwt.decode(token, self._keys.get_by_kid(kid), algorithms=[alg])
            registry = jwt.JWTClaimsRegistry(
                now=int(now),
                leeway=self.leeway,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                exp={"essential": True},
                sub={"essential": True},
            )
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise InvalidToken(f"invalid token: {exc.error}") from None
        claims = decoded.claims
        revoked = self.deny_list.denies(claims, now)
        if revoked is not None:
            raise InvalidToken(f"token revoked ({revoked})")
        return Principal(
            subject=str(claims["sub"]),
            client_id=str(claims.get("client_id", "")),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            claims=claims,
            token=token,
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


# ---- FastAPI ---------------------------------------------------------------------------------


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _current_principal(request: Request) -> Principal:
    token = _bearer(request)
    if token is None:
        raise InvalidToken("missing bearer token")
    verifier: TokenVerifier = request.app.state.runtime.verifier
    return await verifier.verify(token)


async def _current_member(principal: Principal = Depends(_current_principal)) -> Principal:
    if principal.member_id is None:
        raise PermissionDenied("this endpoint needs a member's token")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(_current_principal)]
"""The verified caller of an API route (service or member)."""

CurrentMember = Annotated[Principal, Depends(_current_member)]
"""The verified member calling an API route with their own token (`.member_id`).
Member-facing routes use `member_scope(...)` instead, which also checks the scope."""


def member_scope(*scopes: str) -> Any:
    """A dependency: the member's own token carrying one of `scopes`.

    `Reader = Annotated[Principal, Depends(member_scope("shop:read"))]`; a token without the scope
    is refused with 403 `insufficient_scope` and a `WWW-Authenticate` naming the scope."""
    if not scopes:
        raise ValueError("member_scope needs at least one scope")

    async def dependency(principal: Principal = Depends(_current_member)) -> Principal:
        return principal.require_scope(*scopes)

    dependency.__name__ = f"member_scope_{'_'.join(s.replace(':', '_') for s in scopes)}"
    return dependency


def service_scope(*scopes: str) -> Any:
    """A dependency: a service's (client-credentials) token carrying one of `scopes`."""
    if not scopes:
        raise ValueError("service_scope needs at least one scope")

    async def dependency(principal: Principal = Depends(_current_principal)) -> Principal:
        if not principal.is_service:
            raise PermissionDenied("this endpoint needs a client-credentials token")
        return principal.require_scope(*scopes)

    dependency.__name__ = f"service_scope_{'_'.join(s.replace(':', '_') for s in scopes)}"
    return dependency


def any_scope(*scopes: str) -> Any:
    """A dependency: any verified token (member or service) carrying one of `scopes`."""
    if not scopes:
        raise ValueError("any_scope needs at least one scope")

    async def dependency(principal: Principal = Depends(_current_principal)) -> Principal:
        return principal.require_scope(*scopes)

    dependency.__name__ = f"any_scope_{'_'.join(s.replace(':', '_') for s in scopes)}"
    return dependency


# ---- gRPC ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallAuth:
    """The verified parties of one gRPC call."""

    caller: Principal
    member: Principal | None

    def require_service_scope(self, *scopes: str) -> Principal:
        """The caller must be a service holding one of `scopes`."""
        if not self.caller.is_service:
            raise PermissionDenied("this call is for services only")
        if not any(self.caller.has_scope(s) for s in scopes):
            raise InsufficientScope(scopes, f"service {self.caller.client_id!r} lacks scope {' or '.join(scopes)}")
        return self.caller

    def require_member(self, member_id: str, scope: str) -> Principal:
        """The member `member_id` must have authorized this call with `scope`."""
        member = self.member
        if member is None:
            raise PermissionDenied("this call needs the member's authorization")
        if member.member_id != member_id:
            raise PermissionDenied("the member token belongs to another member")
        if not member.has_scope(scope):
            raise InsufficientScope((scope,), f"the member has not granted {scope}")
        return member

    def require_read_scope(self, member_scope: str, service_scope: str) -> Principal:
        """Before looking anything up: the member's token carries `member_scope`, or (without a
        member token) the calling service holds `service_scope`. A caller without the scope learns
        nothing, not even whether the record exists; ownership is checked once it is found."""
        if self.member is not None:
            return self.member.require_scope(member_scope)
        return self.require_service_scope(service_scope)

    def require_member_or_service(self, member_id: str, member_scope: str, service_scope: str) -> Principal:
        """A read for `member_id`: the member's own token with `member_scope` (directly or passed
        on by a service), or, with no member token, a service holding `service_scope`. A member
        token for another member is refused even when the service could read on its own."""
        if self.member is not None:
            return self.require_member(member_id, member_scope)
        return self.require_service_scope(service_scope)


_call: contextvars.ContextVar[CallAuth] = contextvars.ContextVar("kizuna_call_auth")


def current_call() -> CallAuth:
    """The verified parties of the gRPC call being handled."""
    try:
        return _call.get()
    except LookupError:
        raise Unauthenticated("no verified caller for this call") from None


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def authorized(behavior: UnaryBehavior, verifier: TokenVerifier) -> UnaryBehavior:
    """`behavior` run once the call's tokens verify, with `current_call()` answering its parties.

    The kit's gRPC server wraps every method of a service with it once, when the service is
    registered (`rpc.GrpcServer`); a token that does not verify is the call's UNAUTHENTICATED (or,
    when the keys cannot be fetched, UNAVAILABLE) before the handler runs."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        auth = await _verify_call(verifier, dict(context.invocation_metadata() or ()))
        token = _call.set(auth)
        try:
            return await behavior(request, context)
        finally:
            _call.reset(token)

    return call


async def _verify_call(verifier: TokenVerifier, metadata: dict[str, Any]) -> CallAuth:
    scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("missing bearer token in the authorization metadata")
    caller = await verifier.verify(token.strip())
    member = None
    member_token = metadata.get(MEMBER_TOKEN_METADATA)
    if member_token:
        member = await verifier.verify(str(member_token))
        if member.member_id is None:
            raise InvalidToken(f"{MEMBER_TOKEN_METADATA} must be a member's token")
    elif caller.member_id is not None:
        member = caller
    return CallAuth(caller=caller, member=member)


def call_metadata(service_token: str, member_token: str | None = None) -> Sequence[tuple[str, str]]:
    """gRPC metadata for a call made by a service, optionally on a member's behalf."""
    metadata = [("authorization", f"Bearer {service_token}")]
    if member_token:
        metadata.append((MEMBER_TOKEN_METADATA, member_token))
    return metadata


# ---- service tokens --------------------------------------------------------------------------


class ServiceTokenClient:
    """Client-credentials tokens for this service, cached per scope until shortly before expiry."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        http: httpx.AsyncClient | None = None,
        renew_before_seconds: float = 30.0,
        token_endpoint: str | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self._http = http
        self.renew_before = renew_before_seconds
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = asyncio.Lock()
        self._token_endpoint: str | None = token_endpoint

    async def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = outbound.async_client(timeout=5)
        return self._http

    async def token(self, scope: str) -> str:
        """A valid access token for `scope` (space-separated scopes).

        `Unauthenticated` when identity refuses this client; `Unavailable` when identity cannot be
        reached or answers with something that is not a token, so that a caller's peer call fails
        the way any call to an unreachable peer does (a 503 and a plain message, not a crash)."""
        cached = self._cache.get(scope)
        if cached and cached[1] - self.renew_before > time.monotonic():
            return cached[0]
        async with self._lock:
            cached = self._cache.get(scope)
            if cached and cached[1] - self.renew_before > time.monotonic():
                return cached[0]
            try:
                token, lifetime = await self._fetch(scope)
            except httpx.HTTPError as exc:
                raise Unavailable(f"identity cannot be reached for a service token ({type(exc).__name__})") from exc
            except (KeyError, TypeError, ValueError) as exc:
                raise Unavailable("identity cannot be reached for a service token (answered without one)") from exc
            self._cache[scope] = (token, time.monotonic() + lifetime)
            return token

    async def _fetch(self, scope: str) -> tuple[str, float]:
        """A new token for `scope` and its lifetime in seconds."""
        client = await self._client()
        if self._token_endpoint is None:
            meta = (await client.get(f"{self.issuer}/.well-known/openid-configuration")).json()
            self._token_endpoint = str(meta["token_endpoint"])
        resp = await client.post(
            self._token_endpoint,
            data={"grant_type": "client_credentials", "scope": scope},
            auth=(self.client_id, self._secret),
        )
        if resp.status_code >= 500:
            raise Unavailable(f"identity cannot be reached for a service token (answered {resp.status_code})")
        if resp.status_code != 200:
            raise Unauthenticated(f"token endpoint refused client {self.client_id}: {resp.status_code}")
        body = resp.json()
        token = body["access_token"]
        if not isinstance(token, str) or not token:
            raise ValueError("access_token is not a string")
        return token, float(body.get("expires_in", 300))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
