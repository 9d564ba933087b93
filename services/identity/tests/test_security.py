"""Every security rule of the provider, as a failing attempt: redirect URIs, codes, PKCE, refresh
token rotation and binding, token checks at a resource server, CSRF, throttling, cookies."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from identity.tokens import Issuer
from joserfc import jwt
from joserfc.jwk import ECKey
from kizuna.kit.auth import TokenVerifier
from kizuna.kit.db import utcnow
from kizuna.kit.errors import Unauthenticated
from kizuna.kit.testing import free_port

from .identity_support import (
    OTHER_SECRET,
    SPA_REDIRECT,
    WEB_REDIRECT,
    WEB_SECRET,
    Idp,
    authorize,
    code_for,
    csrf_of,
    exchange,
    identity_settings,
    pkce_pair,
    query_of,
    running_identity,
    sign_in,
    sign_up,
)


async def signed_in(idp: Idp, email: str = "sec@example.com") -> httpx.AsyncClient:
    browser = idp.browser()
    response = await sign_up(browser, email)
    assert response.status_code == 303, response.text[:300]
    return browser


async def introspect(idp: Idp, token: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{idp.issuer}/introspect", data={"token": token}, auth=("web", WEB_SECRET))
    body: dict[str, Any] = response.json()
    return body


async def refresh(idp: Idp, refresh_token: str, client: tuple[str, str] = ("web", WEB_SECRET)) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{idp.issuer}/token", auth=client, data={"grant_type": "refresh_token", "refresh_token": refresh_token}
        )


# ---- redirect URIs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:9/evil",  # another path
        WEB_REDIRECT + "?next=https://evil.example",  # extra query
        "http://127.0.0.1:10/auth/callback",  # another port
        "http://localhost:9/auth/callback",  # another host spelling
        WEB_REDIRECT + "/",  # trailing slash
    ],
)
async def test_unregistered_redirect_uri_shows_an_error_page_and_never_redirects(
    idp_sqlite: Idp, redirect_uri: str
) -> None:
    browser = await signed_in(idp_sqlite)
    response = await authorize(browser, redirect_uri=redirect_uri)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "not valid" in response.text


async def test_unknown_client_and_missing_redirect_uri_show_error_pages(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite)
    assert (await authorize(browser, client_id="nobody")).status_code == 400
    response = await browser.get("/authorize", params={"response_type": "code", "client_id": "web", "scope": "openid"})
    assert response.status_code == 400 and "location" not in response.headers


# ---- codes ------------------------------------------------------------------------------------


async def test_replayed_code_fails_and_revokes_the_tokens_issued_from_it(idp: Idp) -> None:
    browser = await signed_in(idp)
    verifier, challenge = pkce_pair()
    code = await code_for(browser, code_challenge=challenge, code_challenge_method="S256")
    first = await exchange(idp, code, verifier=verifier)
    assert first.status_code == 200
    tokens = first.json()
    assert (await introspect(idp, tokens["access_token"]))["active"] is True

    replay = await exchange(idp, code, verifier=verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert await introspect(idp, tokens["access_token"]) == {"active": False}
    assert (await refresh(idp, tokens["refresh_token"])).json()["error"] == "invalid_grant"


async def test_code_expires_after_sixty_seconds(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite)
    code = await code_for(browser)
    later = utcnow() + timedelta(seconds=61)
    idp_sqlite.provider.set_clock(lambda: later)
    response = await exchange(idp_sqlite, code)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


async def test_code_issued_to_one_client_cannot_be_redeemed_by_another(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite)
    code = await code_for(browser)
    stolen = await exchange(idp_sqlite, code, client_id="other", secret=OTHER_SECRET)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"


# ---- PKCE -------------------------------------------------------------------------------------


async def test_missing_or_wrong_pkce_verifier_is_rejected(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite)
    _verifier, challenge = pkce_pair()
    code = await code_for(browser, code_challenge=challenge, code_challenge_method="S256")
    missing = await exchange(idp_sqlite, code)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"

    code = await code_for(browser, code_challenge=challenge, code_challenge_method="S256")
    wrong = await exchange(idp_sqlite, code, verifier=pkce_pair()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


async def test_public_client_must_use_s256(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite)
    verifier, challenge = pkce_pair()
    without = await authorize(browser, client_id="spa", redirect_uri=SPA_REDIRECT)
    assert without.status_code == 302 and query_of(without.headers["location"])["error"] == "invalid_request"
    plain = await authorize(
        browser, client_id="spa", redirect_uri=SPA_REDIRECT, code_challenge=verifier, code_challenge_method="plain"
    )
    assert plain.status_code == 302 and query_of(plain.headers["location"])["error"] == "invalid_request"

    code = await code_for(
        browser, client_id="spa", redirect_uri=SPA_REDIRECT, code_challenge=challenge, code_challenge_method="S256"
    )
    no_verifier = await exchange(idp_sqlite, code, client_id="spa", secret=None, redirect_uri=SPA_REDIRECT)
    assert no_verifier.status_code == 400
    code = await code_for(
        browser, client_id="spa", redirect_uri=SPA_REDIRECT, code_challenge=challenge, code_challenge_method="S256"
    )
    ok = await exchange(idp_sqlite, code, client_id="spa", secret=None, redirect_uri=SPA_REDIRECT, verifier=verifier)
    assert ok.status_code == 200 and "id_token" in ok.json()


# ---- refresh tokens ---------------------------------------------------------------------------


async def test_reuse_of_a_rotated_refresh_token_revokes_the_grant(idp: Idp) -> None:
    browser = await signed_in(idp)
    tokens = (await exchange(idp, await code_for(browser))).json()
    rotated = (await refresh(idp, tokens["refresh_token"])).json()
    assert rotated["refresh_token"] != tokens["refresh_token"]

    # Within the grace period the immediately previous token still works (two tabs at once).
    tab2 = await refresh(idp, tokens["refresh_token"])
    assert tab2.status_code == 200

    later = utcnow() + timedelta(seconds=30)
    idp.provider.set_clock(lambda: later)
    reuse = await refresh(idp, tokens["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # The whole grant is gone: the newest refresh token and the access tokens too.
    assert (await refresh(idp, rotated["refresh_token"])).json()["error"] == "invalid_grant"
    assert await introspect(idp, rotated["access_token"]) == {"active": False}


async def test_a_token_older_than_the_previous_one_is_refused_inside_the_grace_window(idp: Idp) -> None:
    browser = await signed_in(idp)
    now = utcnow()
    idp.provider.set_clock(lambda: now)  # everything below happens inside the grace window
    first = (await exchange(idp, await code_for(browser))).json()
    second = (await refresh(idp, first["refresh_token"])).json()
    third = (await refresh(idp, second["refresh_token"])).json()

    # `first` is two rotations old: not the two-tabs case, so a stolen token; the grant ends.
    stale = await refresh(idp, first["refresh_token"])
    assert stale.status_code == 400 and stale.json()["error"] == "invalid_grant"
    assert (await refresh(idp, third["refresh_token"])).json()["error"] == "invalid_grant"
    assert await introspect(idp, third["access_token"]) == {"active": False}


async def test_a_grace_window_reuse_mints_at_most_one_extra_token(idp: Idp) -> None:
    browser = await signed_in(idp)
    now = utcnow()
    idp.provider.set_clock(lambda: now)
    first = (await exchange(idp, await code_for(browser))).json()
    tab1 = (await refresh(idp, first["refresh_token"])).json()
    tab2 = await refresh(idp, first["refresh_token"])  # the other tab, at the same moment
    assert tab2.status_code == 200 and tab2.json()["refresh_token"] != tab1["refresh_token"]

    # A third use of the same token is not a second tab: refused, and the grant is revoked.
    again = await refresh(idp, first["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    for token in (tab1, tab2.json()):
        assert (await refresh(idp, token["refresh_token"])).json()["error"] == "invalid_grant"


async def test_refresh_token_is_bound_to_its_client(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite)
    tokens = (await exchange(idp_sqlite, await code_for(browser))).json()
    stolen = await refresh(idp_sqlite, tokens["refresh_token"], client=("other", OTHER_SECRET))
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert (await refresh(idp_sqlite, tokens["refresh_token"])).status_code == 200


# ---- tokens at a resource server ----------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_resource_server_rejects_expired_tampered_none_wrong_audience_and_unknown_key(idp_sqlite: Idp) -> None:
    provider = idp_sqlite.provider
    verifier = TokenVerifier(idp_sqlite.issuer, refetch_floor_seconds=0)
    now = utcnow()
    good, _, _ = provider.issuer.access_token(subject="mbr_x", client_id="web", scope="openid", lifetime=60, now=now)
    assert (await verifier.verify(good)).subject == "mbr_x"

    expired, _, _ = provider.issuer.access_token(
        subject="mbr_x", client_id="web", scope="openid", lifetime=60, now=now - timedelta(hours=1)
    )
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered = f"{header}.{_b64({**claims, 'sub': 'mbr_someone_else'})}.{signature}"
    kid = json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]
    none_alg = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{payload}."
    wrong_aud, _, _ = Issuer(idp_sqlite.issuer, "another-api", provider.keys).access_token(
        subject="mbr_x", client_id="web", scope="openid", lifetime=60, now=now
    )
    wrong_iss, _, _ = Issuer("http://127.0.0.1:1", "kizuna", provider.keys).access_token(
        subject="mbr_x", client_id="web", scope="openid", lifetime=60, now=now
    )
    foreign_key = ECKey.generate_key("P-256", parameters={"kid": "attacker"})
    unknown_kid = jwt.encode({"alg": "ES256", "kid": "attacker", "typ": "at+jwt"}, claims, foreign_key)
    id_token_typ = provider.issuer.sign({**claims})  # typ JWT, not at+jwt

    for bad in (expired, tampered, none_alg, wrong_aud, wrong_iss, unknown_kid, id_token_typ):
        with pytest.raises(Unauthenticated):
            await verifier.verify(bad)
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{idp_sqlite.issuer}/userinfo", headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401
    await verifier.aclose()


# ---- forms ------------------------------------------------------------------------------------


async def test_form_posts_without_a_valid_csrf_token_are_refused(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite, "csrf@example.com")
    attacker = idp_sqlite.browser()  # another browser: no CSRF cookie at all
    assert (await attacker.post("/signin", data={"email": "csrf@example.com", "password": "x"})).status_code == 403
    assert (
        await attacker.post(
            "/signup", data={"email": "n@example.com", "display_name": "n", "password": "long enough password"}
        )
    ).status_code == 403
    # The member's own browser, but a forged form (no or a wrong token):
    for path, data in [
        ("/account/email", {"email": "evil@example.com", "password": "correct horse battery"}),
        ("/account/profile", {"display_name": "pwned"}),
        ("/account/password", {"current_password": "correct horse battery", "new_password": "attacker chosen pw"}),
        ("/account/sessions/end-all", {}),
        ("/signout", {}),
        ("/logout", {"confirm": "yes"}),
    ]:
        for token in (None, "0" * 64):
            body = dict(data, **({"csrf_token": token} if token else {}))
            response = await browser.post(path, data=body)
            assert response.status_code == 403, (path, response.status_code)
    account = await browser.get("/account")
    assert account.status_code == 200 and "csrf@example.com" in account.text and "pwned" not in account.text


async def test_sign_in_is_throttled_per_account(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite, "throttle@example.com")
    for _ in range(5):
        assert (await sign_in(browser, "throttle@example.com", "wrong password!")).status_code == 401
    blocked = await sign_in(browser, "throttle@example.com")
    assert blocked.status_code == 429


async def test_sign_in_is_throttled_per_address(nats_url: str, tmp_path: Path) -> None:
    settings = identity_settings(
        nats_url, f"sqlite+aiosqlite:///{tmp_path / 'i.db'}", tmp_path, identity_signin_max_failures_ip=3
    )
    async with running_identity(settings) as idp:
        browser = idp.browser()
        await sign_up(browser, "victim@example.com")
        for n in range(3):
            assert (await sign_in(browser, f"guess{n}@example.com", "wrong password!")).status_code == 401
        # Any browser at that address waits now; the victim's own known device does not.
        assert (await sign_in(idp.browser(), "victim@example.com")).status_code == 429
        assert (await sign_in(browser, "victim@example.com")).status_code == 303


async def test_cookies_are_httponly_samesite_and_secure_under_https(
    idp_sqlite: Idp, nats_url: str, tmp_path: Path
) -> None:
    browser = idp_sqlite.browser()
    response = await sign_up(browser, "cookie@example.com")
    session_cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("kz_idp_session="))
    assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie and "Secure" not in session_cookie

    port = free_port()
    settings = identity_settings(
        nats_url,
        f"sqlite+aiosqlite:///{tmp_path / 'https.db'}",
        tmp_path / "https",
        http_port=port,
        kizuna_issuer="https://id.kizuna.example",
        # Not local development: the key-encryption key must be configured.
        identity_key_encryption_keys="v1:" + base64.urlsafe_b64encode(bytes(32)).decode(),
    )
    async with running_identity(settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        page = await http.get("/signup")
        csrf_cookie = page.headers["set-cookie"]
        assert "Secure" in csrf_cookie and "HttpOnly" in csrf_cookie
        # A client does not send Secure cookies over plain HTTP: hand the CSRF cookie back by hand
        # (a TLS-terminating proxy sits in front in production).
        csrf_value = csrf_cookie.split(";")[0].split("=", 1)[1]
        signed_up = await http.post(
            "/signup",
            data={
                "email": "secure@example.com",
                "display_name": "Sec",
                "password": "correct horse battery",
                "csrf_token": csrf_of(page.text),
            },
            headers={"Cookie": f"kz_csrf={csrf_value}"},
        )
        assert signed_up.status_code == 303, signed_up.text[:300]
        secure_session = next(c for c in signed_up.headers.get_list("set-cookie") if c.startswith("kz_idp_session="))
        assert "Secure" in secure_session and "HttpOnly" in secure_session and "SameSite=lax" in secure_session


async def test_prompt_none_without_a_session_returns_login_required(idp_sqlite: Idp) -> None:
    response = await authorize(idp_sqlite.browser(), prompt="none", state="s1")
    assert response.status_code == 302
    assert response.headers["location"].startswith(WEB_REDIRECT)
    assert query_of(response.headers["location"]) == {"error": "login_required", "state": "s1"}


async def test_signin_page_is_reached_and_returns_to_the_authorization(idp_sqlite: Idp) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "back@example.com")
    await browser.post("/signout", data={"csrf_token": csrf_of((await browser.get("/signout")).text)})
    response = await authorize(browser, login_hint="back@example.com")
    assert response.headers["location"].startswith("/signin?")
    next_url = query_of(response.headers["location"])["next"]
    signed = await sign_in(browser, "back@example.com", next=next_url)
    assert signed.status_code == 303 and signed.headers["location"] == next_url
    final = await browser.get(next_url)
    assert "code" in query_of(final.headers["location"])


async def test_prompt_login_asks_for_the_password_again_even_with_a_session(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite, "again@example.com")
    now = idp_sqlite.provider.now()
    idp_sqlite.provider.set_clock(lambda: now + timedelta(minutes=5))  # the sign-in is no longer fresh
    response = await authorize(browser, prompt="login")
    assert response.status_code == 302 and response.headers["location"].startswith("/signin?")
    back = query_of(response.headers["location"])
    assert back["reauth"] == "1" and "prompt=login" not in back["next"]
    again = await sign_in(browser, "again@example.com", next=back["next"])
    assert again.status_code == 303
    code = await authorize(
        browser,
        **{
            k: v
            for k, v in query_of(back["next"]).items()
            if k not in ("response_type", "client_id", "redirect_uri", "scope")
        },
    )
    assert "code" in query_of(code.headers["location"])


async def test_account_deletion_password_is_throttled_like_sign_in(idp_sqlite: Idp) -> None:
    browser = await signed_in(idp_sqlite, "throttle-delete@example.com")
    for _ in range(5):
        page = await browser.get("/account")
        wrong = await browser.post(
            "/account/delete", data={"password": "not the password", "confirm": "yes", "csrf_token": csrf_of(page.text)}
        )
        assert wrong.status_code == 401
    page = await browser.get("/account")
    blocked = await browser.post(
        "/account/delete",
        data={"password": "correct horse battery", "confirm": "yes", "csrf_token": csrf_of(page.text)},
    )
    assert blocked.status_code == 429
    assert (await browser.get("/account")).status_code == 200  # still there, still signed in


async def test_parallel_guesses_cannot_slip_under_the_throttle(idp: Idp) -> None:
    """Twenty wrong passwords at once for one account: no more are checked than the limit allows."""
    browser = await signed_in(idp, "parallel@example.com")
    guesses = [idp.browser() for _ in range(20)]
    try:
        answers = await asyncio.gather(*(sign_in(b, "parallel@example.com", "wrong password!") for b in guesses))
    finally:
        for b in guesses:
            await b.aclose()
    codes = sorted(a.status_code for a in answers)
    limit = idp.runtime.settings.identity_signin_max_failures_account
    assert codes.count(401) == limit, codes
    assert codes.count(429) == 20 - limit, codes
    assert (await sign_in(idp.browser(), "parallel@example.com")).status_code == 429
    # The guesses came from other browsers: the owner's known device still signs in.
    assert (await sign_in(browser, "parallel@example.com")).status_code == 303
