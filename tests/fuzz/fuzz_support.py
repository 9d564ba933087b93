"""The whole ecosystem as `make up` runs it (real identity, points, shop, travel, fintech, NATS),
and the credentials an outside caller would hold: a member's access token per service (signed in
at identity, authorization code + PKCE, each service's own web client and sign-in scopes) and a
service token per service (client credentials with the scopes its declaration needs)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from kizuna.kit.declaration import Declaration, discover
from kizuna.kit.testing import devstack_port_offset, running_devstack

ROOT = Path(__file__).resolve().parents[2]
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_DEMO = re.compile(r"demo member\s+(\S+) / (\S+)\s+\((mbr_[0-9A-Z]+)\)")


def declared() -> list[Declaration]:
    """Every declared service, or those named in FUZZ_SERVICES (comma-separated; identity is always
    started, since every other service needs its tokens)."""
    declarations = discover(ROOT)
    only = {n.strip() for n in os.environ.get("FUZZ_SERVICES", "").split(",") if n.strip()}
    return [d for d in declarations if not only or d.name in only | {"identity"}]


@dataclass
class Stack:
    declarations: list[Declaration]
    urls: dict[str, str]
    grpc: dict[str, str]
    data_dir: Path
    member_email: str
    member_password: str
    member_id: str
    output: list[str] = field(default_factory=list)
    _member_tokens: dict[str, str] = field(default_factory=dict)
    _service_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return self.urls["identity"]

    def client_secret(self, name: str) -> str:
        secrets_file = json.loads((self.data_dir / "client-secrets.json").read_text())
        return str(secrets_file[name])

    def declaration(self, name: str) -> Declaration:
        return next(d for d in self.declarations if d.name == name)

    def member_token(self, name: str) -> str:
        """The demo member's access token issued to service `name`'s web client with its sign-in scopes."""
        if name not in self._member_tokens:
            self._member_tokens[name] = self._sign_in_as_member(name)
        return self._member_tokens[name]

    def service_token(self, name: str) -> str:
        """Service `name`'s client-credentials token with every scope its declaration needs."""
        if name not in self._service_tokens:
            # identity is no client of itself: it is called by the services that need its scopes.
            caller = self.declaration(name)
            if caller.name == "identity":
                others = [d for d in self.declarations if d.name != "identity"]
                caller = next((d for d in others if any(s.startswith("identity:") for s in d.needs)), others[0])
            response = httpx.post(
                f"{self.identity}/token",
                auth=(caller.name, self.client_secret(caller.name)),
                data={"grant_type": "client_credentials", "scope": " ".join(caller.needs)},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            self._service_tokens[name] = response.json()["access_token"]
        return self._service_tokens[name]

    def _sign_in_as_member(self, name: str) -> str:
        declaration = self.declaration(name)
        if declaration.sign_in is None:  # identity itself: a member token as any web client gets one
            declaration = next(d for d in self.declarations if d.sign_in is not None)
            scopes = [s for s in declaration.sign_in or [] if s in ("openid", "profile", "email")]
        else:
            scopes = declaration.sign_in
        client = declaration.name
        redirect = f"{self.urls[client]}/auth/callback"
        with httpx.Client(base_url=self.identity, follow_redirects=False, timeout=10) as browser:
            page = browser.get("/signin")
            csrf = _CSRF.search(page.text)
            assert csrf, f"{page.status_code} {page.text[:3000]}"
            signed = browser.post(
                "/signin",
                data={"email": self.member_email, "password": self.member_password, "csrf_token": csrf.group(1)},
            )
            assert signed.status_code == 303, signed.text[:300]
            verifier = secrets.token_urlsafe(48)
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            authorized = browser.get(
                "/authorize",
                params={
                    "response_type": "code",
                    "client_id": client,
                    "redirect_uri": redirect,
                    "scope": " ".join(scopes),
                    "state": "fuzz",
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                },
            )
            assert authorized.status_code == 302, authorized.text[:300]
            code = parse_qs(urlsplit(authorized.headers["location"]).query)["code"][0]
        token = httpx.post(
            f"{self.identity}/token",
            auth=(client, self.client_secret(client)),
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "code_verifier": verifier,
            },
            timeout=10,
        )
        assert token.status_code == 200, token.text
        return str(token.json()["access_token"])


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`make up`'s stack on free ports and a fresh data dir, stopped (the whole process group)
    whatever happens."""
    declarations = declared()
    offset = devstack_port_offset(declarations)
    data_dir = tmp_path_factory.mktemp("fuzz-stack")
    names = [d.name for d in declarations]
    with running_devstack(data_dir, offset, names, cwd=ROOT, log_level="WARNING") as output:
        demo = next((m for m in map(_DEMO.search, output) if m), None)
        if demo is None:
            pytest.fail("the ecosystem printed no demo member:\n" + "".join(output))
        urls = {d.name: f"http://127.0.0.1:{d.http_port + offset}" for d in declarations}
        grpc = {d.name: f"127.0.0.1:{d.grpc_port + offset}" for d in declarations}
        yield Stack(declarations, urls, grpc, data_dir, demo.group(1), demo.group(2), demo.group(3), output)
