"""The Authlib classes identity builds on, as the type checker sees them.

Authlib ships no type information, so every Authlib name is `Any` to mypy and a class derived
from one goes unchecked. This module is the one place identity imports those base classes from:
at run time the names are Authlib's own classes; to the type checker they are the declarations
below, which list exactly what identity uses of each (attributes it reads or sets, methods it
calls or overrides) with their types. Attributes Authlib fills per request (`request.client`,
`grant.server`, ...) are declared loosely here and narrowed by identity's subclasses.

When upgrading Authlib, check these declarations against its source (authlib/oauth2/rfc6749,
rfc7009, rfc7636, rfc7662, authlib/oidc/core): the tests exercise every one of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# The response Authlib's server hands back: (HTTP status, body, headers).
OAuthResponse = tuple[int, Any, list[tuple[str, str]]]

if TYPE_CHECKING:

    class ClientMixin:
        """authlib.oauth2.rfc6749.ClientMixin: the interface a client model implements."""

    class AuthorizationCodeMixin:
        """authlib.oauth2.rfc6749.AuthorizationCodeMixin: the interface a stored code implements."""

    class TokenMixin:
        """authlib.oauth2.rfc6749.TokenMixin: the interface a stored token implements."""

    class OAuth2Payload:
        @property
        def data(self) -> dict[str, str]: ...
        @property
        def datalist(self) -> defaultdict[str, list[str]]: ...
        @property
        def redirect_uri(self) -> str | None: ...
        @property
        def scope(self) -> str | None: ...

    class OAuth2Request:
        method: str
        uri: str
        headers: Any
        # Set by the grants while they validate the request.
        client: Any
        user: Any
        authorization_code: Any
        refresh_token: Any

        def __init__(self, method: str, uri: str, body: Any = None, headers: Any = None) -> None: ...
        @property
        def scope(self) -> str | None: ...

    class AuthorizationServer:
        def __init__(self, scopes_supported: list[str] | None = None) -> None: ...
        def register_token_generator(self, grant_type: str, func: Callable[..., dict[str, Any]]) -> None: ...
        def register_grant(self, grant_cls: type[Any], extensions: list[Any] | None = None) -> None: ...
        def register_endpoint(self, endpoint: Any) -> None: ...
        def get_consent_grant(self, request: Any = None, end_user: Any = None) -> Any: ...
        def create_authorization_response(
            self, request: Any = None, grant_user: Any = None, grant: Any = None
        ) -> OAuthResponse: ...
        def create_token_response(self, request: Any = None) -> OAuthResponse: ...
        def create_endpoint_response(self, name: str, request: Any = None) -> OAuthResponse: ...

    class _Grant:
        GRANT_TYPE: str
        TOKEN_ENDPOINT_AUTH_METHODS: list[str]
        server: Any
        request: Any

        def register_hook(self, hook_type: str, hook: Callable[..., None]) -> None: ...

    class AuthorizationCodeGrant(_Grant): ...

    class RefreshTokenGrant(_Grant):
        INCLUDE_NEW_REFRESH_TOKEN: bool

        def issue_token(self, user: Any, refresh_token: Any) -> dict[str, Any]: ...

    class CodeChallenge:
        SUPPORTED_CODE_CHALLENGE_METHOD: list[str]
        DEFAULT_CODE_CHALLENGE_METHOD: str

        def __init__(self, required: bool = True) -> None: ...
        def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None: ...

    class OpenIDToken:
        def process_token(self, grant: Any, response: Any) -> Any: ...

    class _Endpoint:
        CLIENT_AUTH_METHODS: list[str]
        server: Any

        def __init__(self, server: Any = None) -> None: ...

    class IntrospectionEndpoint(_Endpoint): ...

    class RevocationEndpoint(_Endpoint): ...

else:
    from authlib.oauth2.rfc6749 import (
        AuthorizationCodeMixin,
        AuthorizationServer,
        ClientMixin,
        OAuth2Payload,
        OAuth2Request,
        TokenMixin,
    )
    from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
    from authlib.oauth2.rfc7009 import RevocationEndpoint
    from authlib.oauth2.rfc7636 import CodeChallenge
    from authlib.oauth2.rfc7662 import IntrospectionEndpoint
    from authlib.oidc.core.grants.code import OpenIDToken

__all__ = [
    "AuthorizationCodeGrant",
    "AuthorizationCodeMixin",
    "AuthorizationServer",
    "ClientMixin",
    "CodeChallenge",
    "IntrospectionEndpoint",
    "OAuth2Payload",
    "OAuth2Request",
    "OAuthResponse",
    "OpenIDToken",
    "RefreshTokenGrant",
    "RevocationEndpoint",
    "TokenMixin",
]
