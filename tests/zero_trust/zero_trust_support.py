"""The whole ecosystem as `make up` runs it (every declared service, authenticated NATS, clients and
scopes derived from the declarations), plus one operator client that may use identity's admin API,
as a security team would run it to attack it."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from kizuna.kit import declaration
from kizuna.kit.devstack import Stack
from kizuna.kit.testing import devstack_port_offset

OPERATOR = "zero-trust-operator"
OPERATOR_SECRET = secrets.token_urlsafe(32)
PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Ecosystem:
    stack: Stack
    urls: dict[str, str]
    grpc: dict[str, str]
    client_secrets: dict[str, str]

    @property
    def issuer(self) -> str:
        return self.urls["identity"]

    def operator_token(self) -> str:
        resp = httpx.post(
            f"{self.issuer}/token",
            auth=(OPERATOR, OPERATOR_SECRET),
            data={"grant_type": "client_credentials", "scope": "identity:admin"},
        )
        resp.raise_for_status()
        return str(resp.json()["access_token"])


@pytest.fixture(scope="module")
def ecosystem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ecosystem]:
    decls = declaration.discover()
    offset = devstack_port_offset(decls)
    data_dir: Path = tmp_path_factory.mktemp("zero-trust")
    stack = Stack(decls, data_dir, offset)
    stack.nats_url = ""  # always its own authenticated nats-server, whatever the environment says
    stack.logs.mkdir(parents=True, exist_ok=True)
    try:
        stack.check_ports()
        stack.start_nats()
        stack.migrate()
        identity = stack.envs["identity"]
        clients = json.loads(identity["KIZUNA_CLIENTS"])
        clients.append(
            {
                "client_id": OPERATOR,
                "client_secret": OPERATOR_SECRET,
                "grant_types": ["client_credentials"],
                "scopes": ["identity:admin"],
            }
        )
        identity["KIZUNA_CLIENTS"] = json.dumps(clients)
        # Passwords are hashed at a test cost: the attacks are on tokens, not on argon2id.
        identity.update(IDENTITY_ARGON2_TIME_COST="1", IDENTITY_ARGON2_MEMORY_KIB="64", LOG_FORMAT="json")
        stack.start_services()
        stack.wait_ready(120)
        yield Ecosystem(
            stack,
            urls={ep.name: ep.url for ep in stack.endpoints},
            grpc={ep.name: f"127.0.0.1:{ep.grpc_port}" for ep in stack.endpoints},
            client_secrets=stack.client_secrets(),
        )
    finally:
        stack.stop()


# ---- acting as a member's browser -----------------------------------------------------------------


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def browser(eco: Ecosystem) -> httpx.Client:
    return httpx.Client(base_url=eco.issuer, follow_redirects=False, timeout=10)


def sign_up(eco: Ecosystem, email: str, name: str = "Hana") -> httpx.Client:
    b = browser(eco)
    page = b.get("/signup")
    resp = b.post(
        "/signup", data={"email": email, "display_name": name, "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    )
    assert resp.status_code == 303, resp.text[:300]
    return b


def sign_in(eco: Ecosystem, email: str) -> httpx.Client:
    b = browser(eco)
    page = b.get("/signin")
    resp = b.post("/signin", data={"email": email, "password": PASSWORD, "next": "", "csrf_token": csrf_of(page.text)})
    assert resp.status_code == 303, resp.text[:300]
    return b


def authorize(b: httpx.Client, client_id: str, redirect_uri: str, scope: str) -> httpx.Response:
    return b.get(
        "/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": secrets.token_urlsafe(8),
        },
    )


def code_from(resp: httpx.Response) -> str:
    assert resp.status_code == 302, resp.text[:300]
    query = query_of(resp.headers["location"])
    assert "code" in query, query
    return query["code"]


def exchange(eco: Ecosystem, code: str, client: tuple[str, str], redirect_uri: str) -> httpx.Response:
    return httpx.post(
        f"{eco.issuer}/token",
        auth=client,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
    )


def first_party_token(eco: Ecosystem, b: httpx.Client, service: str, scope: str) -> str:
    """A token the member's own session at `service` would hold (first-party: no consent page)."""
    redirect = f"{eco.urls[service]}/auth/callback"
    code = code_from(authorize(b, service, redirect, scope))
    resp = exchange(eco, code, (service, eco.client_secrets[service]), redirect)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])
