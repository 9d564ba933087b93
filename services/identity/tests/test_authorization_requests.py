"""The authorization endpoint takes POSTed requests from RPs (OIDC Core §3.1.2.1) like GETs; only
identity's own consent form needs its CSRF token. Codes live at most 60 s, by configuration too."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from kizuna.kit.testing import free_port

from .identity_support import (
    THIRD_SECRET,
    WEB_REDIRECT,
    Idp,
    csrf_of,
    exchange,
    query_of,
    sign_in,
    sign_up,
)

TP_REDIRECT = "http://127.0.0.1:9/tp/callback"


def authorization_request(**params: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "web",
        "redirect_uri": WEB_REDIRECT,
        "scope": "openid profile",
        "state": secrets.token_urlsafe(8),
        **params,
    }


async def test_a_posted_authorization_request_is_served_like_a_get(idp_sqlite: Idp) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "posted@example.com")
    request = authorization_request(nonce="n-post")
    # An RP's auto-submitting form: form-encoded, no CSRF token of identity's (it cannot have one).
    response = await browser.post("/authorize", data=request)
    assert response.status_code == 302 and response.headers["location"].startswith(WEB_REDIRECT + "?")
    back = query_of(response.headers["location"])
    assert back["state"] == request["state"]
    assert (await exchange(idp_sqlite, back["code"])).status_code == 200


async def test_a_posted_request_without_a_session_comes_back_after_sign_in(idp_sqlite: Idp) -> None:
    await sign_up(idp_sqlite.browser(), "posted-later@example.com")
    browser = idp_sqlite.browser()
    request = authorization_request()
    to_signin = await browser.post("/authorize", data=request)
    assert to_signin.status_code == 302 and to_signin.headers["location"].startswith("/signin?")
    next_url = query_of(to_signin.headers["location"])["next"]
    # The way back carries the POSTed parameters as a GET.
    assert next_url.startswith("/authorize?") and query_of(next_url) == request
    assert (await sign_in(browser, "posted-later@example.com", next=next_url)).status_code == 303
    returned = await browser.get(next_url)
    assert query_of(returned.headers["location"])["state"] == request["state"]
    assert "code" in query_of(returned.headers["location"])


async def test_the_consent_decision_needs_identitys_csrf_token(idp_sqlite: Idp) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "consent-post@example.com")
    request = authorization_request(client_id="thirdparty", redirect_uri=TP_REDIRECT, scope="openid points:read")
    page = await browser.post("/authorize", data=request)  # a posted request from a third party: asks
    assert page.status_code == 200 and 'data-scope="points:read"' in page.text

    for forged in ({**request, "consent": "allow"}, {**request, "consent": "allow", "csrf_token": "0" * 64}):
        refused = await browser.post("/authorize", data=forged)
        assert refused.status_code == 400 and "location" not in refused.headers
    form = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    assert form["csrf_token"] == csrf_of(page.text)
    allowed = await browser.post("/authorize", data={**form, "consent": "allow"})
    code = query_of(allowed.headers["location"])["code"]
    tokens = await exchange(idp_sqlite, code, client_id="thirdparty", secret=THIRD_SECRET, redirect_uri=TP_REDIRECT)
    assert tokens.status_code == 200


async def test_a_code_lifetime_over_sixty_seconds_fails_at_start(nats_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "KIZUNA_ISSUER": "http://127.0.0.1:1",
        "KIZUNA_DATA_DIR": str(tmp_path),
        "HTTP_PORT": str(free_port()),
        "GRPC_PORT": str(free_port()),
        "IDENTITY_CODE_SECONDS": "61",
    }
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "identity"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "IDENTITY_CODE_SECONDS" in result.stderr and "less than or equal to 60" in result.stderr
