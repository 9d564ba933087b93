"""The OpenID Connect provider: Authlib's AuthorizationServer, grants and endpoints, and the thin
adapter that lets them serve FastAPI requests.

Authlib's server is synchronous; each call runs in a worker thread and its storage hooks run on
the service's event loop (`Provider.sync`). Routes: discovery, JWKS, authorize, token, userinfo,
introspection, revocation. Sign-in pages are in pages.py, logout in logout.py.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from authlib.oauth2.rfc6749.errors import InvalidRequestError, InvalidScopeError, OAuth2Error
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from kizuna.kit.errors import InvalidArgument

from identity import pages
from identity.authlib_types import (
    AuthorizationCodeGrant,
    AuthorizationServer,
    CodeChallenge,
    IntrospectionEndpoint,
    OAuth2Payload,
    OAuth2Request,
    OAuthResponse,
    OpenIDToken,
    RefreshTokenGrant,
    RevocationEndpoint,
)
from identity.clients import Client, consent_covers, remember_consent
from identity.context import identity_of
from identity.members import Member
from identity.provider import Provider
from identity.sessions import OpSession
from identity.tokens import AuthorizationCode, RefreshToken, TokenRecord

router = APIRouter()


# ---- the request adapter --------------------------------------------------------------------


class _Payload(OAuth2Payload):
    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in items:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class KizunaRequest(OAuth2Request):
    """An Authlib request built from a FastAPI request whose body was already read."""

    # What the grants find while validating the request (None until then).
    client: Client
    user: Member | None
    authorization_code: AuthorizationCode | None
    refresh_token: RefreshToken | None

    def __init__(self, uri: str, method: str, headers: Any, query: list[tuple[str, str]], form: list[tuple[str, str]]):
        super().__init__(method, uri, headers=headers)
        self._args = dict(query)
        self._form = dict(form)
        self.payload = _Payload(query + form)
        self.op_session: OpSession | None = None

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class InvalidOAuthParameter(InvalidArgument):
    code = "invalid_request"


# RFC 6749 appendix A: parameter values are ASCII; Authlib echoes some of them (redirect_uri,
# response_type, scope) into error descriptions, which must be %x20-21 / %x23-5B / %x5D-7E and
# raised ValueError (a 500) otherwise. `state`/`nonce` are VSCHAR, `claims` is JSON, a login
# hint is an email address that may be internationalised.
_TEXT_PARAMS = frozenset({"login_hint"})
_VSCHAR_PARAMS = frozenset({"state", "nonce", "claims", "ui_locales", "acr_values"})


def _parameter_problem(items: list[tuple[str, str]]) -> str | None:
    for key, value in items:
        if key in _TEXT_PARAMS:
            continue
        forbidden = "" if key in _VSCHAR_PARAMS else '"\\'
        if any(not " " <= c <= "~" or c in forbidden for c in key + value):
            return f"the parameter {key[:40]!a} contains characters OAuth does not allow"
    return None


class MalformedClientCredentials(InvalidArgument):
    http_status = 401
    code = "invalid_client"


def _basic_credentials_readable(encoded: str) -> bool:
    """Base64 of UTF-8 `id:secret` (RFC 7617); Authlib would fail on anything else with a 500."""
    try:
        return ":" in base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return False


async def oauth_request(provider: Provider, request: Request) -> KizunaRequest:
    """The Authlib request; InvalidOAuthParameter (400) for values outside OAuth's character set."""
    form: list[tuple[str, str]] = []
    if request.method == "POST":
        form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
    problem = _parameter_problem(list(request.query_params.multi_items()) + form)
    if problem is not None:
        raise InvalidOAuthParameter(problem)
    auth = request.headers.get("authorization", "")
    if auth[:6].lower() == "basic " and not _basic_credentials_readable(auth[6:]):
        raise MalformedClientCredentials("malformed Basic credentials")
    # The issuer's URL, not the socket's: behind a TLS-terminating proxy this is the https one.
    uri = provider.issuer_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return KizunaRequest(uri, request.method, request.headers, list(request.query_params.multi_items()), form)


def to_response(result: OAuthResponse) -> Response:
    status, body, headers = result
    if isinstance(body, dict):
        return JSONResponse(body, status_code=status, headers=dict(headers))
    return Response(body or "", status_code=status, headers=dict(headers))


# ---- Authlib server, grants and endpoints ---------------------------------------------------

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


class KizunaAuthorizationServer(AuthorizationServer):
    def __init__(self, provider: Provider) -> None:
        super().__init__(scopes_supported=provider.scopes.all)
        self.provider = provider
        self.register_token_generator("default", provider.generate_token)
        self.register_grant(CodeGrant, [S256Only(required=True), MemberScopes(), IdToken(provider)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(Introspection(self))
        self.register_endpoint(Revocation(self))

    def query_client(self, client_id: str) -> Client | None:
        return self.provider.sync(self.provider.client(client_id))

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        self.provider.sync(self.provider.save_token(token, request))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass  # no listeners: the effects live in the storage hooks

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers


class S256Only(CodeChallenge):
    """PKCE: S256 only (never `plain`); required for public clients, accepted from every client."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if data.get("code_challenge") and data.get("code_challenge_method", "plain") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)
        if grant.request.client.public and not data.get("code_challenge"):
            raise InvalidRequestError("public clients must use PKCE with code_challenge_method=S256")


class MemberScopes:
    """A member can only grant member scopes the client is registered for (never `points:credit`)."""

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.check)

    def check(self, grant: Any, redirect_uri: str) -> None:
        requested = set((grant.request.payload.scope or "").split())
        client: Client = grant.request.client
        if "openid" not in requested:
            raise InvalidScopeError("the openid scope is required")
        if not requested <= set(client.scopes) & grant.server.provider.scopes.member:
            raise InvalidScopeError(
                "scope not allowed for this client: " + " ".join(sorted(requested - set(client.scopes)))
            )


class IdToken(OpenIDToken):
    """Adds the ID token (OIDC Core §3.1.3.3) to the code grant's token response."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def process_token(self, grant: Any, response: Any) -> Any:
        _, token, _ = response
        request = grant.request
        if "openid" not in (token.get("scope") or "").split():
            return token
        code = request.authorization_code
        token["id_token"] = id_token(
            self.provider,
            request.user,
            request.client.id,
            token,
            auth_time=code.get_auth_time(),
            sid=code.session_id,
            nonce=code.nonce,
        )
        return token


def id_token(
    provider: Provider,
    member: Any,
    client_id: str,
    token: dict[str, Any],
    *,
    auth_time: int | None,
    sid: str | None,
    nonce: str | None,
) -> str:
    """An ID token (OIDC Core §2) for `member` to go with `token`'s access token."""
    now = provider.now()
    claims: dict[str, Any] = {
        "iss": provider.issuer_url,
        "sub": member.id,
        "aud": client_id,
        "azp": client_id,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + provider.settings.identity_id_token_seconds,
        "amr": ["pwd"],
        "at_hash": at_hash(token["access_token"]),
    }
    if auth_time is not None:
        claims["auth_time"] = auth_time
    if sid:
        claims["sid"] = sid
    if nonce:
        claims["nonce"] = nonce
    claims.update(userinfo_claims(member, token["scope"].split()))
    return provider.issuer.sign(claims)


def at_hash(access_token: str) -> str:
    """The ID token's `at_hash` (OIDC Core §3.1.3.6): the left half of the access token's SHA-256
    (ES256's hash), base64url without padding."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def userinfo_claims(member: Any, scopes: list[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    if "profile" in scopes:
        claims.update(
            name=member.display_name,
            preferred_username=member.display_name,
            updated_at=int(member.updated_at.timestamp()),
        )
    if "email" in scopes:
        claims.update(email=member.email, email_verified=member.email_verified)
    return claims


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    server: KizunaAuthorizationServer
    request: KizunaRequest

    @property
    def provider(self) -> Provider:
        return self.server.provider

    def save_authorization_code(self, code: str, request: Any) -> None:
        self.provider.sync(self.provider.save_code(code, request))

    def query_authorization_code(self, code: str, client: Client) -> Any:
        return self.provider.sync(self.provider.consume_code(code, client))

    def delete_authorization_code(self, authorization_code: Any) -> None:
        pass  # consumed (marked used) when queried, so a replay is recognised and revokes the grant

    def authenticate_user(self, authorization_code: Any) -> Any:
        return self.provider.sync(self.provider.member(authorization_code.member_id))

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        code = self.request.authorization_code
        assert code is not None  # the grant found it before it asks for a token
        return self.provider.generate_token(
            grant_type or self.GRANT_TYPE,
            self.request.client,
            user,
            scope,
            expires_in,
            include_refresh_token,
            grant_id=code.grant_id,
            sid=code.session_id,
        )


class RefreshGrant(RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotate on every use
    server: KizunaAuthorizationServer
    request: KizunaRequest

    @property
    def provider(self) -> Provider:
        return self.server.provider

    def authenticate_refresh_token(self, refresh_token: str) -> Any:
        return self.provider.sync(self.provider.use_refresh_token(refresh_token))

    def authenticate_user(self, refresh_token: Any) -> Any:
        return self.provider.sync(self.provider.grant_member(refresh_token.grant_id))

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        assert self.request.refresh_token is not None  # the grant found it before it asks for a token
        grant_id = self.request.refresh_token.grant_id
        grant = self.provider.sync(self.provider.grant(grant_id))
        return self.provider.generate_token(
            grant_type or self.GRANT_TYPE,
            self.request.client,
            user,
            scope,
            expires_in,
            include_refresh_token,
            grant_id=grant_id,
            sid=grant.session_id if grant else None,
        )

    def issue_token(self, user: Any, refresh_token: Any) -> dict[str, Any]:
        """A fresh ID token too when `openid` was granted (OIDC Core §12.2): same `sub`, the
        original `auth_time` and `sid`, no `nonce`."""
        token: dict[str, Any] = super().issue_token(user, refresh_token)
        if "openid" in (token.get("scope") or "").split():
            grant = self.provider.sync(self.provider.grant(refresh_token.grant_id))
            auth_time = int(grant.auth_time.timestamp()) if grant and grant.auth_time else None
            token["id_token"] = id_token(
                self.provider,
                user,
                self.request.client.id,
                token,
                auth_time=auth_time,
                sid=grant.session_id if grant else None,
                nonce=None,
            )
        return token

    def revoke_old_credential(self, refresh_token: Any) -> None:
        self.provider.sync(self.provider.rotate_refresh_token(refresh_token))


class _TokenLookup:
    server: KizunaAuthorizationServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return self.server.provider.sync(self.server.provider.find_token(token_string, token_type_hint))


class Introspection(_TokenLookup, IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def check_permission(self, token: TokenRecord, client: Client, request: Any) -> bool:
        """Who may learn about a token (RFC 7662 §2.2, §4): the client it was issued to, and the
        ecosystem's own services (first-party, registered from configuration), which act as
        resource servers for every member token. Anyone else is told `{"active": false}`, so a
        third-party client cannot probe other clients' tokens."""
        if client.public:
            return False
        return client.first_party or token.client_id == client.id

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        claims = token.claims
        body = {
            "active": True,
            "client_id": token.client_id,
            "scope": token.scope,
            "token_type": token.kind,
            "sub": claims.get("sub"),
            "iss": claims.get("iss"),
            "exp": int(token.expires_at.timestamp()),
        }
        for name in ("aud", "iat", "jti"):
            if name in claims:
                body[name] = claims[name]
        return body


class Revocation(_TokenLookup, RevocationEndpoint):
    CLIENT_AUTH_METHODS = AUTH_METHODS

    def revoke_token(self, token: TokenRecord, request: Any) -> None:
        self.server.provider.sync(self.server.provider.revoke(token))


def provider_of(request: Request) -> Provider:
    return identity_of(request.app.state.runtime).provider


def server_of(request: Request) -> KizunaAuthorizationServer:
    return identity_of(request.app.state.runtime).oauth


# ---- discovery and JWKS -----------------------------------------------------------------------


@router.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request) -> JSONResponse:
    provider = provider_of(request)
    iss = provider.issuer_url
    return JSONResponse(
        {
            "issuer": iss,
            "authorization_endpoint": f"{iss}/authorize",
            "token_endpoint": f"{iss}/token",
            "userinfo_endpoint": f"{iss}/userinfo",
            "jwks_uri": f"{iss}/jwks",
            "introspection_endpoint": f"{iss}/introspect",
            "revocation_endpoint": f"{iss}/revoke",
            "end_session_endpoint": f"{iss}/logout",
            "scopes_supported": provider.scopes.all,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "sid",
                "name",
                "preferred_username",
                "email",
                "email_verified",
                "updated_at",
            ],
            "prompt_values_supported": ["none", "login", "consent"],
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "frontchannel_logout_supported": False,
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
        },
        headers={"Cache-Control": "public, max-age=300"},
    )


# RFC 8414 metadata at its own well-known path (same document).
router.add_api_route("/.well-known/oauth-authorization-server", openid_configuration, methods=["GET"])


@router.get("/jwks")
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(provider_of(request).keys.jwks(), headers={"Cache-Control": "public, max-age=300"})


# ---- authorization endpoint -------------------------------------------------------------------


def _error_redirect(redirect_uri: str, error: str, state: str | None, description: str = "") -> RedirectResponse:
    params = {"error": error}
    if description:
        params["error_description"] = description
    if state:
        params["state"] = state
    sep = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(redirect_uri + sep + urlencode(params), status_code=302)


@router.api_route("/authorize", methods=["GET", "POST"])
async def authorize(request: Request) -> Response:
    """The authorization endpoint: validate, make sure the member is signed in (or say why not),
    ask for consent where needed, then redirect back with a code."""
    provider = provider_of(request)
    server = server_of(request)
    oreq = await oauth_request(provider, request)
    # RPs may POST the authorization request itself (OIDC Core §3.1.2.1): that is no more than the
    # same request as a GET. Only the member's decision on identity's own consent form is a state
    # change that a cross-site form must not make, so only that carries (and needs) the CSRF token.
    if "consent" in oreq.form and not pages.csrf_ok(request, oreq.form.get("csrf_token")):
        return pages.error_page(request, "This form has expired. Go back and try again.", 400)
    data = oreq.payload.data
    if not data.get("redirect_uri"):
        return pages.error_page(request, "The application sent you here without a return address (redirect_uri).", 400)
    try:
        grant = await provider.in_thread(server.get_consent_grant, oreq, None)
    except OAuth2Error as error:
        if error.redirect_uri:
            return _error_redirect(error.redirect_uri, error.error, data.get("state"), error.description or "")
        return pages.error_page(
            request, f"The application's sign-in request is not valid: {error.description or error.error}.", 400
        )
    client: Client = oreq.client
    redirect_uri = data["redirect_uri"]
    state = data.get("state")
    prompts = set(data.get("prompt", "").split())
    if "none" in prompts and len(prompts) > 1:
        return _error_redirect(redirect_uri, "invalid_request", state, "prompt=none cannot be combined")

    op = await pages.current_session(request)
    member = await provider.member(op.member_id) if op else None
    now = provider.now()
    reauth = "login" in prompts and not pages.fresh_login(request, op)
    max_age = data.get("max_age")
    if op and max_age is not None and max_age.isdigit() and (now - op.auth_time).total_seconds() > int(max_age):
        reauth = True
    if member is None or op is None or reauth:
        if "none" in prompts:
            return _error_redirect(redirect_uri, "login_required", state)
        request_params = [
            (k, v) for k, values in oreq.payload.datalist.items() for v in values if k not in ("csrf_token", "consent")
        ]
        return pages.signin_redirect(request, request_params, data.get("login_hint", ""), force=reauth)

    scopes = (oreq.scope or "").split()
    if not client.first_party:
        async with provider.db.sessions() as session:
            consented = await consent_covers(session, member.id, client.id, scopes) and "consent" not in prompts
        if not consented:
            if "none" in prompts:
                return _error_redirect(redirect_uri, "consent_required", state)
            decision = oreq.form.get("consent") if request.method == "POST" else None
            if decision is None:
                return pages.consent_page(request, client, scopes, list(oreq.payload.datalist.items()))
            if decision != "allow":
                return _error_redirect(redirect_uri, "access_denied", state)
            async with provider.db.transaction() as session:
                await remember_consent(session, member.id, client.id, scopes, now)

    oreq.op_session = op
    result = await provider.in_thread(server.create_authorization_response, oreq, member, grant)
    return to_response(result)


# ---- token, introspection, revocation ---------------------------------------------------------


_FORM = "application/x-www-form-urlencoded"
# RFC 6749 §3.2: a token request parameter must not be included more than once.
_SINGLE_PARAMS = frozenset({"grant_type", "scope", "client_id", "client_secret"})


def _urlencoded(body: bytes) -> list[tuple[str, str]] | None:
    """The parameters of an `application/x-www-form-urlencoded` body (ASCII, percent-encoded UTF-8),
    or None when it is not one."""
    try:
        return parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict")
    except ValueError:  # UnicodeDecodeError (non-ASCII body or bad UTF-8 escapes) is a ValueError
        return None


@router.post("/token")
async def token(request: Request) -> Response:
    provider = provider_of(request)
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() == _FORM:
        # Parsed here rather than by the multipart form parser: the same result for a urlencoded
        # body, at a fraction of the cost on the busiest endpoint (bench/token_bench.py).
        items = _urlencoded(await request.body())
        if items is None:
            return _token_error("invalid_request", "the request body is not valid form-urlencoded text")
        params = dict(items)
        if params.get("grant_type") == "client_credentials":
            if len(params) != len(items) and any(
                sum(1 for key, _ in items if key == name) > 1 for name in _SINGLE_PARAMS
            ):
                return _token_error("invalid_request", "a parameter was given more than once")
            return await service_token(provider, request, params)
    else:
        form = await request.form()
        if form.get("grant_type") == "client_credentials":
            return await service_token(provider, request, form)
    oreq = await oauth_request(provider, request)
    return to_response(await provider.in_thread(server_of(request).create_token_response, oreq))


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# What a third-party (not first-party) client may hold through client_credentials: fintech's
# merchant API, where a partner charges a card whose number the member gave it. Nothing that reads
# or moves a member's data by member ID.
PARTNER_SCOPES = frozenset({"fintech:pay"})


def _token_error(
    error: str, description: str, status: int = 400, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers={**_NO_STORE, **(headers or {})}
    )


async def service_token(provider: Provider, request: Request, form: Any) -> Response:
    """client_credentials (RFC 6749 §4.4) on the event loop, without Authlib's worker thread and
    without a database write: the busiest grant of the ecosystem (every service-to-service call).

    Trade-off: these tokens are not recorded. They live `identity_access_token_seconds` (5 min)
    and resource servers verify them locally, so a record never stopped one anyway; revoking one
    (RFC 7009) writes a deny-list row that introspection honours."""
    client_id, secret, basic = "", "", False
    auth = request.headers.get("authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
            raw_id, _, raw_secret = decoded.partition(":")
            client_id, secret, basic = unquote(raw_id), unquote(raw_secret), True
        except (ValueError, UnicodeDecodeError):
            return _token_error("invalid_client", "malformed Basic credentials", 401, {"WWW-Authenticate": "Basic"})
    else:
        client_id, secret = str(form.get("client_id") or ""), str(form.get("client_secret") or "")
    challenge = {"WWW-Authenticate": "Basic"} if basic else None
    client = None
    if client_id:
        fresh, client = provider.cached_client(client_id)
        if not fresh:
            client = await provider.client(client_id)
    if client is None or client.public or not secret or not client.check_client_secret(secret):
        return _token_error("invalid_client", "client authentication failed", 401, challenge)
    if not client.check_grant_type("client_credentials"):
        return _token_error("unauthorized_client", "this client may not use client_credentials")
    requested = str(form.get("scope") or "")
    if not set(requested.split()) <= set(client.scopes):
        return _token_error("invalid_scope", "scope not allowed for this client")
    if not client.first_party:
        # A third-party client acting on its own acts for no member: reading or moving a member's
        # data takes that member's consent (authorization code), never client_credentials.
        withheld = set(requested.split()) - PARTNER_SCOPES
        if withheld:
            named = " ".join(sorted(withheld))
            return _token_error("invalid_scope", f"a third-party client cannot hold these scopes on its own: {named}")
    lifetime = provider.settings.identity_access_token_seconds
    access, _jti, _exp = provider.issuer.access_token(
        subject=client.id, client_id=client.id, scope=requested, lifetime=lifetime, now=provider.now()
    )
    return JSONResponse(
        {"token_type": "Bearer", "access_token": access, "expires_in": lifetime, "scope": requested}, headers=_NO_STORE
    )


@router.post("/introspect")
async def introspect(request: Request) -> Response:
    provider = provider_of(request)
    oreq = await oauth_request(provider, request)
    return to_response(await provider.in_thread(server_of(request).create_endpoint_response, "introspection", oreq))


@router.post("/revoke")
async def revoke(request: Request) -> Response:
    provider = provider_of(request)
    oreq = await oauth_request(provider, request)
    return to_response(await provider.in_thread(server_of(request).create_endpoint_response, "revocation", oreq))


# ---- userinfo ---------------------------------------------------------------------------------


def _bearer_error(description: str) -> JSONResponse:
    return JSONResponse(
        {"error": "invalid_token", "error_description": description},
        status_code=401,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'},
    )


@router.api_route("/userinfo", methods=["GET", "POST"])
async def userinfo(request: Request) -> Response:
    provider = provider_of(request)
    auth = request.headers.get("authorization", "")
    token_value = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not token_value and request.method == "POST":
        form = await request.form()
        value = form.get("access_token")
        token_value = value if isinstance(value, str) else ""
    if not token_value:
        return JSONResponse({"error": "invalid_request"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    try:
        claims = provider.issuer.verify(token_value, typ="at+jwt", now=provider.now())
    except ValueError as exc:
        return _bearer_error(str(exc))
    if not await provider.access_token_live(claims):
        return _bearer_error("revoked")
    scopes = str(claims.get("scope", "")).split()
    if "openid" not in scopes:
        return JSONResponse(
            {"error": "insufficient_scope"},
            status_code=403,
            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="openid"'},
        )
    member = await provider.member(claims["sub"])
    if member is None:
        return _bearer_error("unknown subject")
    return JSONResponse({"sub": member.id, **userinfo_claims(member, scopes)}, headers={"Cache-Control": "no-store"})


__all__ = ["KizunaAuthorizationServer", "router"]
