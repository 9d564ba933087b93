"""Sign-in rules seen from a browser and an RP: max_age forces re-authentication (and the ID token
says when it happened), login_hint fills the sign-in page, "sign out everywhere" ends every session,
passwords are stored as Argon2id and the policy refuses guessable ones; RFC 8414 metadata."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
from identity.members import Member
from joserfc import jwt
from joserfc.jwk import KeySet
from kizuna.kit.db import utcnow
from sqlmodel import select

from .identity_support import (
    PASSWORD,
    Idp,
    authorize,
    code_for,
    csrf_of,
    exchange,
    query_of,
    sign_in,
    sign_up,
)


def id_token_claims(idp: Idp, tokens: dict[str, Any]) -> dict[str, Any]:
    return dict(jwt.decode(tokens["id_token"], KeySet.import_key_set(idp.provider.keys.jwks())).claims)


async def test_max_age_forces_a_new_sign_in_and_the_id_token_carries_auth_time(idp_sqlite: Idp) -> None:
    idp = idp_sqlite
    signed_up_at = (utcnow() + timedelta(seconds=1)).replace(microsecond=0)  # after the key activates
    idp.provider.set_clock(lambda: signed_up_at)
    browser = idp.browser()
    await sign_up(browser, "maxage@example.com")

    # A recent enough sign-in: a code at once, and the ID token says when the member signed in.
    fresh = (await exchange(idp, await code_for(browser, max_age="600"))).json()
    assert id_token_claims(idp, fresh)["auth_time"] == int(signed_up_at.timestamp())

    later = signed_up_at + timedelta(minutes=15)
    idp.provider.set_clock(lambda: later)
    stale = await authorize(browser, max_age="600")
    assert stale.status_code == 302 and stale.headers["location"].startswith("/signin?")
    back = query_of(stale.headers["location"])
    assert back["reauth"] == "1" and "max_age" not in query_of(back["next"])
    assert "confirm it is you" in (await browser.get(stale.headers["location"])).text

    again = await sign_in(browser, "maxage@example.com", next=back["next"])
    assert again.status_code == 303 and again.headers["location"] == back["next"]
    returned = await browser.get(back["next"])
    code = query_of(returned.headers["location"])["code"]
    reauthenticated = (await exchange(idp, code)).json()
    assert id_token_claims(idp, reauthenticated)["auth_time"] == int(later.timestamp())


async def test_login_hint_fills_in_the_sign_in_page(idp_sqlite: Idp) -> None:
    browser = idp_sqlite.browser()
    for hint, shown in (
        ("hinted@example.com", 'value="hinted@example.com"'),
        ('x"><script>alert(1)</script>', 'value="x&#34;&gt;&lt;script&gt;'),  # escaped, not markup
    ):
        redirected = await authorize(browser, login_hint=hint)
        assert redirected.status_code == 302 and query_of(redirected.headers["location"])["login_hint"] == hint
        page = await browser.get(redirected.headers["location"])
        assert re.search(r'<input id="email" name="email" type="email" [^>]*' + re.escape(shown), page.text)
        assert "<script>alert(1)</script>" not in page.text


async def test_sign_out_everywhere_ends_every_session_of_the_member(idp_sqlite: Idp) -> None:
    laptop, phone, someone_else = idp_sqlite.browser(), idp_sqlite.browser(), idp_sqlite.browser()
    await sign_up(laptop, "everywhere@example.com")
    await sign_in(phone, "everywhere@example.com")
    await sign_up(someone_else, "bystander@example.com")
    page = await laptop.get("/account")
    assert len(re.findall(r'data-session="', page.text)) == 2

    done = await laptop.post("/account/sessions/end-all", data={"csrf_token": csrf_of(page.text)})
    assert done.status_code == 303 and done.headers["location"] == "/signin"
    for browser in (laptop, phone):
        assert (await browser.get("/account")).status_code == 302
        silent = await authorize(browser, prompt="none")
        assert query_of(silent.headers["location"])["error"] == "login_required"
    assert (await someone_else.get("/account")).status_code == 200  # only this member's sessions


async def test_passwords_are_stored_as_argon2id(idp_sqlite: Idp) -> None:
    await sign_up(idp_sqlite.browser(), "hashed@example.com")
    async with idp_sqlite.runtime.db.sessions() as session:
        member = (await session.exec(select(Member).where(Member.email == "hashed@example.com"))).one()
    assert member.password_hash.startswith("$argon2id$") and PASSWORD not in member.password_hash


async def test_the_password_policy_refuses_guessable_passwords(idp_sqlite: Idp) -> None:
    for email, name, password, reason in (
        ("deny@example.com", "Deny", "Password123", "too easy to guess"),  # deny-listed, any case
        ("few@example.com", "Few", "abcabcabcabc", "too easy to guess"),  # three distinct characters
        ("me.myself@example.com", "Me", "Me.Myself@example.com", "must not be your email address or name"),
        ("named@example.com", "Correct Horse Named", "correct horse named", "must not be your email address or name"),
        ("long@example.com", "Long", "x1" * 65, "at most 128 characters"),
    ):
        refused = await sign_up(idp_sqlite.browser(), email, name=name, password=password)
        assert refused.status_code == 400 and reason in refused.text, (password, refused.status_code)
    # Four distinct characters and ten long is enough: length, not composition (NIST SP 800-63B).
    assert (await sign_up(idp_sqlite.browser(), "ok@example.com", password="abcdabcdab")).status_code == 303


async def test_rfc8414_metadata_is_served_at_its_own_well_known_path(idp_sqlite: Idp) -> None:
    async with httpx.AsyncClient(base_url=idp_sqlite.issuer) as http:
        oauth = await http.get("/.well-known/oauth-authorization-server")
        oidc = await http.get("/.well-known/openid-configuration")
    assert oauth.status_code == 200 and oauth.headers["content-type"] == "application/json"
    metadata = oauth.json()
    assert metadata == oidc.json()
    assert metadata["issuer"] == idp_sqlite.issuer
    assert metadata["token_endpoint"] == f"{idp_sqlite.issuer}/token"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
