"""Test support: run identity in this process on a fresh database, and act as a browser."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from identity.context import identity_of
from identity.provider import Provider
from identity.service import service
from identity.settings import Settings
from kizuna.kit import declaration
from kizuna.kit.service import Runtime
from kizuna.kit.testing import free_port
from kizuna.kit.testing import reset_streams as reset_streams  # re-exported for the tests

PASSWORD = "correct horse battery"
WEB_SECRET = "web-secret-0123456789abcdef"
SVC_SECRET = "svc-secret-0123456789abcdef"
OTHER_SECRET = "other-secret-0123456789abcdef"
THIRD_SECRET = "third-secret-0123456789abcdef"
WEB_REDIRECT = "http://127.0.0.1:9/auth/callback"
SPA_REDIRECT = "http://127.0.0.1:9/spa/callback"


def test_clients(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    member_scopes = ["openid", "profile", "email", "offline_access", "points:read", "points:spend"]
    return [
        {
            "client_id": "web",
            "client_secret": WEB_SECRET,
            "redirect_uris": [WEB_REDIRECT],
            "post_logout_redirect_uris": ["http://127.0.0.1:9/"],
            "scopes": member_scopes,
        },
        {
            "client_id": "other",
            "client_secret": OTHER_SECRET,
            "redirect_uris": ["http://127.0.0.1:9/other/callback"],
            "scopes": member_scopes,
        },
        {
            "client_id": "spa",
            "public": True,
            "redirect_uris": [SPA_REDIRECT],
            "scopes": member_scopes,
            "grant_types": ["authorization_code", "refresh_token"],
        },
        {
            "client_id": "thirdparty",
            "client_secret": THIRD_SECRET,
            "first_party": False,
            "redirect_uris": ["http://127.0.0.1:9/tp/callback"],
            "scopes": ["openid", "profile", "points:read"],
        },
        {
            "client_id": "svc",
            "client_secret": SVC_SECRET,
            "grant_types": ["client_credentials"],
            "scopes": ["points:credit", "points:read", "identity:read"],
        },
        *(extra or []),
    ]


def identity_settings(nats_url: str, database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    port = overrides.pop("http_port", None) or free_port()
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "kizuna_issuer": f"http://127.0.0.1:{port}",
        "database_url": database_url,
        "kizuna_data_dir": data_dir,
        "http_port": port,
        "grpc_port": 0,
        "log_format": "text",
        "outbox_poll_seconds": 0.2,
        "identity_argon2_time_cost": 1,
        "identity_argon2_memory_kib": 64,
        "identity_key_reload_seconds": 3600,
        "identity_backchannel_timeout_seconds": 2,
        "kizuna_clients": json.dumps(test_clients(overrides.pop("extra_clients", None))),
        # The scope catalogue make up and the manifests derive from every service's declaration.
        "kizuna_scopes": json.dumps(declaration.scope_catalogue(declaration.discover())),
        **overrides,
    }
    return Settings(**values)


@dataclass
class Idp:
    runtime: Runtime[Settings]
    issuer: str

    @property
    def provider(self) -> Provider:
        return identity_of(self.runtime).provider

    def browser(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.issuer, follow_redirects=False, timeout=10)


@asynccontextmanager
async def running_identity(settings: Settings) -> AsyncIterator[Idp]:
    async with service.running(settings) as runtime:
        yield Idp(runtime, settings.kizuna_issuer)


# ---- acting as a browser ----------------------------------------------------------------------

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def sign_up(
    browser: httpx.AsyncClient, email: str, name: str = "Hana", password: str = PASSWORD
) -> httpx.Response:
    page = await browser.get("/signup")
    return await browser.post(
        "/signup", data={"email": email, "display_name": name, "password": password, "csrf_token": csrf_of(page.text)}
    )


async def sign_in(browser: httpx.AsyncClient, email: str, password: str = PASSWORD, next: str = "") -> httpx.Response:
    page = await browser.get("/signin")
    return await browser.post(
        "/signin", data={"email": email, "password": password, "next": next, "csrf_token": csrf_of(page.text)}
    )


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def authorize(
    browser: httpx.AsyncClient,
    client_id: str = "web",
    redirect_uri: str = WEB_REDIRECT,
    scope: str = "openid profile email offline_access points:read",
    **params: str,
) -> httpx.Response:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": secrets.token_urlsafe(8),
        **params,
    }
    return await browser.get("/authorize", params=query)


async def code_for(browser: httpx.AsyncClient, **kwargs: str) -> str:
    response = await authorize(browser, **kwargs)
    assert response.status_code == 302, response.text[:500]
    query = query_of(response.headers["location"])
    assert "code" in query, query
    return query["code"]


async def exchange(
    idp: Idp,
    code: str,
    *,
    client_id: str = "web",
    secret: str | None = WEB_SECRET,
    redirect_uri: str = WEB_REDIRECT,
    verifier: str | None = None,
) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        data["code_verifier"] = verifier
    async with httpx.AsyncClient() as http:
        if secret:
            return await http.post(f"{idp.issuer}/token", data=data, auth=(client_id, secret))
        return await http.post(f"{idp.issuer}/token", data={**data, "client_id": client_id})
