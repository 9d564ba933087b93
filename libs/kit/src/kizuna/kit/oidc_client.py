"""The OpenID Connect relying party every service's web pages use to sign a member in.

- `/auth/login` (authorization code + PKCE S256, `state`, `nonce`; `?prompt=none` for a silent
  single-sign-on check), `/auth/callback` (verifies the ID token),
  `/auth/backchannel-logout` (identity's logout token ends the local sessions of that `sid`/`sub`);
  `/auth/logout` is a page, in `kizuna.kit.signout` (it needs the CSRF token and the layout, both
  built on this module).
- Sessions live in the service's database (`kit_web_session`), so any replica serves any request;
  the browser holds only a signed session id (itsdangerous), HttpOnly, SameSite=Lax, Secure under
  https. The member's access and refresh tokens stay server-side for calls on the member's behalf.
- `SignedInMember`: a FastAPI dependency; browsers without a session are sent to sign in.
  `MaybeMember`: the member or None, after one silent SSO check per browser.

Wiring in a service:  `Service(..., on_start=[web_sign_in()], http=router_with(oidc_client.router))`
and `create_web_session_table()` in a migration. Reads `KIZUNA_CLIENT_ID` (default: the service
name) and `KIZUNA_CLIENT_SECRET` (local development: derived from a seed in `KIZUNA_DATA_DIR`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from kizuna.kit import outbound
from kizuna.kit.bounds import same_secret
from kizuna.kit.db import Database, UTCDateTime, utcnow
from kizuna.kit.errors import Unavailable
from sqlalchemy import Column, String, Text, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, SQLModel, col

log = logging.getLogger("kizuna.kit.oidc_client")

SESSION_COOKIE = "kz_web_session"
LOGIN_COOKIE = "kz_web_login"
SSO_CHECKED_COOKIE = "kz_web_sso_checked"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
DEFAULT_SCOPES = "openid profile email offline_access points:read"


class WebSession(SQLModel, table=True):
    """A member signed in to this service's pages (one row per browser sign-in)."""

    __tablename__ = "kit_web_session"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    member_id: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    display_name: str = Field(default="", sa_column=Column(String(200), nullable=False))
    sid: str | None = Field(default=None, sa_column=Column(String(100), index=True))
    id_token: str = Field(sa_column=Column(Text, nullable=False))
    access_token: str = Field(sa_column=Column(Text, nullable=False))
    refresh_token: str | None = Field(default=None, sa_column=Column(Text))
    access_expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    ended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


def create_web_session_table() -> None:
    """Create `kit_web_session` (call from a service migration; the kit's first revision may do it)."""
    from alembic import op

    op.create_table(
        "kit_web_session",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(100), nullable=False, index=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("sid", sa.String(100), nullable=True, index=True),
        sa.Column("id_token", sa.Text(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("access_expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
    )


def drop_web_session_table() -> None:
    from alembic import op

    op.drop_table("kit_web_session")


# ---- local development secrets ------------------------------------------------------------------


def dev_client_secret(data_dir: Path, client_id: str) -> str:
    """The client secret of `client_id` in a local `make up`: derived from a random seed that the
    first process to need it writes into the shared data dir. Never used when a secret is configured."""
    data_dir.mkdir(parents=True, exist_ok=True)
    seed_path = data_dir / "dev-client-seed"
    try:
        fd = os.open(seed_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    except FileExistsError:
        pass
    for _ in range(50):  # another process may be between create and write
        seed = seed_path.read_text().strip()
        if seed:
            break
        time.sleep(0.01)
    return hmac.new(seed.encode(), client_id.encode(), hashlib.sha256).hexdigest()


def dev_client_registration(name: str, base_url: str, data_dir: Path) -> dict[str, Any]:
    """A `KIZUNA_CLIENTS` entry for an ecosystem service in local development."""
    base = base_url.rstrip("/")
    return {
        "client_id": name,
        "client_secret": dev_client_secret(data_dir, name),
        "name": name.capitalize(),
        "redirect_uris": [f"{base}/auth/callback"],
        "post_logout_redirect_uris": [f"{base}/"],
        "backchannel_logout_uri": f"{base}/auth/backchannel-logout",
        "first_party": True,
        "scopes": [
            "openid",
            "profile",
            "email",
            "offline_access",
            "points:read",
            "points:spend",
            "points:credit",
            "identity:read",
        ],
    }


# ---- the relying party ------------------------------------------------------------------------


class SignInError(Exception):
    """The sign-in could not be completed; the message is safe to show."""


class SignInUnavailable(Unavailable):
    """Identity cannot be reached (or fails) while signing a member in: a 503 with Retry-After,
    shown to a browser as a page that asks to try again (`kizuna.kit.web.sign_in_unavailable`)."""

    def __init__(self) -> None:
        super().__init__("sign-in is not available right now; try again in a moment")

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


@dataclass
class WebSignIn:
    """One service's OIDC client configuration and its discovery/JWKS caches."""

    issuer: str
    client_id: str
    client_secret: str
    base_url: str
    db: Database
    scopes: str = DEFAULT_SCOPES
    session_seconds: int = 12 * 3600
    jwks_refetch_floor_seconds: float = 10.0
    clock: Callable[[], datetime] = utcnow
    # In-cluster endpoints (KIZUNA_DISCOVERY_URL, KIZUNA_JWKS_URL, KIZUNA_TOKEN_URL): the service's
    # own calls to identity go there; the browser is still sent to the public issuer's pages.
    discovery_url: str = ""
    jwks_url: str = ""
    token_url: str = ""

    def __post_init__(self) -> None:
        self.issuer = self.issuer.rstrip("/")
        self.base_url = self.base_url.rstrip("/")
        secret = hmac.new(self.client_secret.encode(), b"kizuna-web-session", hashlib.sha256).digest()
        self._session_signer = URLSafeSerializer(secret, salt="kz-web-session")
        self._login_signer = URLSafeTimedSerializer(secret, salt="kz-web-login")
        self._http = outbound.async_client(timeout=10)
        self._meta: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_at = float("-inf")
        self.secure_cookies = self.base_url.startswith("https://")

    # Cookies do not isolate ports: services on one host (local development) each need their own names.
    @property
    def session_cookie(self) -> str:
        return f"{SESSION_COOKIE}_{self.client_id}"

    @property
    def login_cookie(self) -> str:
        return f"{LOGIN_COOKIE}_{self.client_id}"

    @property
    def sso_checked_cookie(self) -> str:
        return f"{SSO_CHECKED_COOKIE}_{self.client_id}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url}/auth/callback"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _fetch(self, url: str) -> Any:
        """A JSON document from identity; identity unreachable or failing is `SignInUnavailable`."""
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as exc:
            log.warning("identity unreachable", extra={"url": url, "error": type(exc).__name__})
            raise SignInUnavailable() from exc
        if response.status_code >= 500:
            log.warning("identity failed", extra={"url": url, "status": response.status_code})
            raise SignInUnavailable()
        response.raise_for_status()
        return response.json()

    async def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            meta: dict[str, Any] = await self._fetch(
                self.discovery_url or f"{self.issuer}/.well-known/openid-configuration"
            )
            if meta.get("issuer", "").rstrip("/") != self.issuer:
                raise SignInError("the identity provider names another issuer")
            if self.jwks_url:
                meta["jwks_uri"] = self.jwks_url
            if self.token_url:
                meta["token_endpoint"] = self.token_url
            self._meta = meta
        return self._meta

    async def _key_set(self, kid: str) -> KeySet:
        known = self._keys is not None and any(k.kid == kid for k in self._keys.keys)
        if not known and time.monotonic() - self._keys_at >= self.jwks_refetch_floor_seconds:
            self._keys = KeySet.import_key_set(await self._fetch((await self.metadata())["jwks_uri"]))
            self._keys_at = time.monotonic()
        if self._keys is None:
            raise SignInError("no keys")
        return self._keys

    async def verify_jwt(self, token: str, *, typ: str | None = None, check_exp: bool = True) -> dict[str, Any]:
        """Verify a JWT identity signed for this client (ID token or logout token)."""
        try:
            header = _unverified_header(token)
        except (ValueError, IndexError) as exc:
            raise SignInError("malformed token") from exc
        if header.get("alg") not in ("ES256", "RS256"):
            raise SignInError("unexpected token algorithm")
        if typ is not None and header.get("typ") != typ:
            raise SignInError("unexpected token type")
        keys = await self._key_set(str(header.get("kid", "")))
        try:
            decoded = jwt.decode(token, keys, algorithms=[str(header["alg"])])
            claims = dict(decoded.claims)
            options: dict[str, Any] = {
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.client_id},
                "iat": {"essential": True},
            }
            if typ != "logout+jwt":
                options["sub"] = {"essential": True}
            registry = jwt.JWTClaimsRegistry(now=int(self.clock().timestamp()), leeway=30, **options)
            registry.validate(claims if check_exp else {k: v for k, v in claims.items() if k != "exp"})
        except (JoseError, ValueError) as exc:
            raise SignInError(f"invalid token: {exc}") from None
        return claims

    # ---- cookies ------------------------------------------------------------------------------
    def set_cookie(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(
            name, value, max_age=max_age, httponly=True, samesite="lax", secure=self.secure_cookies, path="/"
        )

    def session_cookie_value(self, web_session_id: str) -> str:
        """The signed value of the session cookie that names a web session (what sign-in sets)."""
        return self._session_signer.dumps(web_session_id)

    def session_id(self, request: Request) -> str | None:
        value = request.cookies.get(self.session_cookie)
        if not value:
            return None
        try:
            sid = self._session_signer.loads(value)
        except BadSignature:
            return None
        return sid if isinstance(sid, str) else None

    # ---- sessions -----------------------------------------------------------------------------
    async def current(self, request: Request) -> WebSession | None:
        sid = self.session_id(request)
        if sid is None:
            return None
        async with self.db.sessions() as session:
            row = await session.get(WebSession, sid)
        if row is None or row.ended_at is not None or row.expires_at <= self.clock():
            return None
        return row

    async def access_token(self, web_session_id: str) -> str:
        """The member's access token for calls on their behalf, refreshed when near expiry."""
        async with self.db.sessions() as session:
            row = await session.get(WebSession, web_session_id)
        if row is None or row.ended_at is not None:
            raise SignInError("signed out")
        if row.access_expires_at - self.clock() > timedelta(seconds=30) or not row.refresh_token:
            return row.access_token
        response = await self._http.post(
            (await self.metadata())["token_endpoint"],
            auth=(self.client_id, self.client_secret),
            data={"grant_type": "refresh_token", "refresh_token": row.refresh_token},
        )
        if response.status_code != 200:
            await self.end_local(web_session_id=web_session_id)
            raise SignInError("the member's grant has ended; sign in again")
        tokens = response.json()
        id_token = row.id_token
        if "id_token" in tokens:
            # OIDC Core §12.2: a refreshed ID token must name the same member; keep it as the
            # id_token_hint for logout.
            claims = await self.verify_jwt(tokens["id_token"])
            if claims.get("sub") != row.member_id:
                await self.end_local(web_session_id=web_session_id)
                raise SignInError("the refreshed ID token names another member")
            id_token = tokens["id_token"]
        async with self.db.transaction() as session:
            await session.exec(
                update(WebSession)
                .where(col(WebSession.id) == web_session_id)
                .values(
                    access_token=tokens["access_token"],
                    refresh_token=tokens.get("refresh_token", row.refresh_token),
                    id_token=id_token,
                    access_expires_at=self.clock() + timedelta(seconds=int(tokens.get("expires_in", 60))),
                )
            )
        return str(tokens["access_token"])

    async def end_local(
        self, *, web_session_id: str | None = None, sid: str | None = None, member_id: str | None = None
    ) -> int:
        conditions: list[ColumnElement[bool]] = [col(WebSession.ended_at).is_(None)]
        if web_session_id:
            conditions.append(col(WebSession.id) == web_session_id)
        elif sid:
            conditions.append(col(WebSession.sid) == sid)
        elif member_id:
            conditions.append(col(WebSession.member_id) == member_id)
        else:
            return 0
        async with self.db.transaction() as session:
            result = await session.exec(update(WebSession).where(*conditions).values(ended_at=self.clock()))
        return int(result.rowcount or 0)


def _unverified_header(token: str) -> dict[str, Any]:
    import json

    segment = token.split(".")[0]
    value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    if not isinstance(value, dict):
        raise SignInError("malformed token")
    return value


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def web_sign_in_of(request: Request) -> WebSignIn:
    state: WebSignIn = request.app.state.runtime.state["web_sign_in"]
    return state


def web_sign_in(
    client_id: str | None = None, client_secret: str | None = None, scopes: str = DEFAULT_SCOPES
) -> Callable[[Any], Awaitable[None]]:
    """An `on_start` hook that configures the relying party for this service."""

    async def start(runtime: Any) -> None:
        settings = runtime.settings
        cid = (
            client_id or getattr(settings, "kizuna_client_id", "") or os.environ.get("KIZUNA_CLIENT_ID") or runtime.name
        )
        secret = (
            client_secret
            or getattr(settings, "kizuna_client_secret", "")
            or os.environ.get("KIZUNA_CLIENT_SECRET")
            or dev_client_secret(Path(settings.kizuna_data_dir), cid)
        )
        runtime.state["web_sign_in"] = WebSignIn(
            issuer=settings.kizuna_issuer,
            client_id=cid,
            client_secret=secret,
            base_url=settings.base_url,
            db=runtime.db,
            scopes=scopes,
            discovery_url=getattr(settings, "kizuna_discovery_url", ""),
            jwks_url=getattr(settings, "kizuna_jwks_url", ""),
            token_url=getattr(settings, "kizuna_token_url", ""),
        )

    return start


# ---- routes -------------------------------------------------------------------------------------

router = APIRouter(prefix="/auth", include_in_schema=False)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@router.get("/login")
async def login(request: Request, next: str = "/", prompt: str = "") -> Response:
    rp = web_sign_in_of(request)
    meta = await rp.metadata()
    state, nonce, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    params = {
        "response_type": "code",
        "client_id": rp.client_id,
        "redirect_uri": rp.redirect_uri,
        "scope": rp.scopes,
        "state": state,
        "nonce": nonce,
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
    }
    if prompt in ("none", "login"):
        params["prompt"] = prompt
    response = RedirectResponse(f"{meta['authorization_endpoint']}?{urlencode(params)}", status_code=302)
    login_state = rp._login_signer.dumps(
        {"state": state, "nonce": nonce, "verifier": verifier, "next": _safe_next(next), "silent": prompt == "none"}
    )
    rp.set_cookie(response, rp.login_cookie, login_state, 600)
    return response


@router.get("/callback")
async def callback(request: Request, code: str = "", state: str = "", error: str = "") -> Response:
    rp = web_sign_in_of(request)
    try:
        pending = rp._login_signer.loads(request.cookies.get(rp.login_cookie, ""), max_age=600)
    except (BadSignature, SignatureExpired):
        return JSONResponse({"error": "sign-in expired; start again at /auth/login"}, status_code=400)
    if not same_secret(str(pending.get("state", "")), state):
        return JSONResponse({"error": "state mismatch"}, status_code=400)
    next_url = _safe_next(pending.get("next"))
    if error:
        if pending.get("silent") and error in ("login_required", "consent_required", "interaction_required"):
            response: Response = RedirectResponse(next_url, status_code=302)
            rp.set_cookie(response, rp.sso_checked_cookie, "1", 300)
        else:
            response = JSONResponse({"error": error}, status_code=400)
        response.delete_cookie(rp.login_cookie, path="/")
        return response
    meta = await rp.metadata()
    try:
        token_response = await rp._http.post(
            meta["token_endpoint"],
            auth=(rp.client_id, rp.client_secret),
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": rp.redirect_uri,
                "code_verifier": pending["verifier"],
            },
        )
    except httpx.HTTPError as exc:
        log.warning("identity's token endpoint unreachable", extra={"error": type(exc).__name__})
        raise SignInUnavailable() from exc
    if token_response.status_code != 200:
        return JSONResponse({"error": "could not complete sign-in"}, status_code=400)
    tokens = token_response.json()
    try:
        claims = await rp.verify_jwt(tokens["id_token"])
    except (SignInError, KeyError) as exc:
        log.warning("ID token rejected", extra={"error": str(exc)})
        return JSONResponse({"error": "invalid ID token"}, status_code=400)
    if claims.get("nonce") != pending["nonce"]:
        return JSONResponse({"error": "nonce mismatch"}, status_code=400)
    now = rp.clock()
    web_session = WebSession(
        id=secrets.token_urlsafe(24),
        member_id=str(claims["sub"]),
        display_name=str(claims.get("name", "")),
        sid=claims.get("sid"),
        id_token=tokens["id_token"],
        access_token=tokens["access_token"],
        refresh_token=tokens.get("refresh_token"),
        access_expires_at=now + timedelta(seconds=int(tokens.get("expires_in", 60))),
        created_at=now,
        expires_at=now + timedelta(seconds=rp.session_seconds),
    )
    async with rp.db.transaction() as session:
        session.add(web_session)
    response = RedirectResponse(next_url, status_code=302)
    rp.set_cookie(response, rp.session_cookie, rp.session_cookie_value(web_session.id), rp.session_seconds)
    response.delete_cookie(rp.login_cookie, path="/")
    return response


@router.post("/backchannel-logout")
async def backchannel_logout(request: Request) -> Response:
    """OIDC Back-Channel Logout 1.0 §2.6: validate the logout token, end the matching sessions."""
    rp = web_sign_in_of(request)
    form = await request.form()
    token = form.get("logout_token")
    headers = {"Cache-Control": "no-store"}
    if not isinstance(token, str):
        return JSONResponse({"error": "invalid_request"}, status_code=400, headers=headers)
    try:
        claims = await rp.verify_jwt(token, typ="logout+jwt")
    except SignInError as exc:
        return JSONResponse(
            {"error": "invalid_request", "error_description": str(exc)}, status_code=400, headers=headers
        )
    events = claims.get("events")
    if not isinstance(events, dict) or BACKCHANNEL_EVENT not in events or "nonce" in claims:
        return JSONResponse({"error": "invalid_request"}, status_code=400, headers=headers)
    if not claims.get("sid") and not claims.get("sub"):
        return JSONResponse({"error": "invalid_request"}, status_code=400, headers=headers)
    ended = await rp.end_local(sid=claims.get("sid"), member_id=claims.get("sub"))
    log.info("back-channel logout", extra={"sessions_ended": ended})
    return Response(status_code=200, headers=headers)


# ---- dependencies -------------------------------------------------------------------------------


@dataclass
class WebMember:
    """The member signed in to this service's pages."""

    member_id: str
    display_name: str
    session_id: str
    _rp: WebSignIn

    async def access_token(self) -> str:
        """Their access token, for calling another service on their behalf (refreshed as needed)."""
        return await self._rp.access_token(self.session_id)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") or request.method == "GET"


def _login_url(request: Request, prompt: str = "") -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    params = {"next": target, **({"prompt": prompt} if prompt else {})}
    return "/auth/login?" + urlencode(params)


async def _signed_in_member(request: Request) -> WebMember:
    rp = web_sign_in_of(request)
    row = await rp.current(request)
    if row is None:
        if _wants_html(request):
            raise HTTPException(status_code=303, headers={"Location": _login_url(request)})
        raise HTTPException(status_code=401, detail="sign in required")
    return WebMember(row.member_id, row.display_name, row.id, rp)


async def _maybe_member(request: Request) -> WebMember | None:
    rp = web_sign_in_of(request)
    row = await rp.current(request)
    if row is not None:
        return WebMember(row.member_id, row.display_name, row.id, rp)
    if request.method == "GET" and request.cookies and not request.cookies.get(rp.sso_checked_cookie):
        # One silent check per browser: signed in at identity already? Then in without a password.
        # Only for a client that keeps cookies (it sent some): the round trip through identity needs
        # them, and a client without any (a crawler, a link preview) gets the anonymous page instead
        # of a sign-in error. A browser's first visit is covered by the layout's script, which asks
        # the same question once the page is shown.
        raise HTTPException(status_code=303, headers={"Location": _login_url(request, prompt="none")})
    return None


SignedInMember = Annotated[WebMember, Depends(_signed_in_member)]
"""The signed-in member of a web page; browsers without a session are sent to sign in."""

MaybeMember = Annotated[WebMember | None, Depends(_maybe_member)]
"""The signed-in member or None, after one silent single-sign-on check per browser."""
