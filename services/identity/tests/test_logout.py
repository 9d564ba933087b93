"""RP-initiated logout (`/logout`): a verified ID token hint signs out at once; a hint that cannot
be verified (a rotated-away key, another issuer, not an ID token) asks the member instead of
failing; never a redirect to an address the client has not registered."""

from __future__ import annotations

from typing import Any

import httpx
from identity.tokens import Issuer, unverified_claims
from kizuna.kit.testing import form_fields

from .identity_support import Idp, code_for, exchange, sign_up

RETURN_TO = "http://127.0.0.1:9/"  # registered for the client "web"


async def signed_in_with_id_token(idp: Idp, email: str) -> tuple[httpx.AsyncClient, dict[str, Any]]:
    browser = idp.browser()
    assert (await sign_up(browser, email)).status_code == 303
    tokens = (await exchange(idp, await code_for(browser))).json()
    return browser, tokens


async def still_signed_in(browser: httpx.AsyncClient) -> bool:
    return (await browser.get("/account")).status_code == 200


async def test_a_verified_hint_signs_out_and_returns_to_the_registered_address(idp_sqlite: Idp) -> None:
    browser, tokens = await signed_in_with_id_token(idp_sqlite, "bye@example.com")
    response = await browser.get(
        "/logout",
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": RETURN_TO, "state": "s-1"},
    )
    assert response.status_code == 302 and response.headers["location"] == RETURN_TO + "?state=s-1"
    assert not await still_signed_in(browser)


async def test_an_unregistered_post_logout_redirect_uri_never_redirects(idp_sqlite: Idp) -> None:
    browser, tokens = await signed_in_with_id_token(idp_sqlite, "evil-return@example.com")
    for params in (
        {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://evil.example/"},
        {"client_id": "web", "post_logout_redirect_uri": RETURN_TO + "evil"},
        {"post_logout_redirect_uri": RETURN_TO},  # no client named at all: nothing to check it against
    ):
        response = await browser.get("/logout", params=params)
        assert response.status_code == 400 and "location" not in response.headers, params
        assert "has not registered" in response.text
    assert await still_signed_in(browser)


async def test_client_id_that_does_not_match_the_hint_is_refused(idp_sqlite: Idp) -> None:
    browser, tokens = await signed_in_with_id_token(idp_sqlite, "mismatch@example.com")
    response = await browser.get(
        "/logout",
        params={"id_token_hint": tokens["id_token"], "client_id": "other", "post_logout_redirect_uri": RETURN_TO},
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert "client_id" in response.text
    assert await still_signed_in(browser)


async def test_a_hint_from_a_rotated_away_key_asks_then_signs_out(idp_sqlite: Idp) -> None:
    browser, tokens = await signed_in_with_id_token(idp_sqlite, "rotated@example.com")
    # The key that signed the ID token retires now and leaves the JWKS at once.
    await idp_sqlite.provider.keys.rotate(publish_seconds=0, retire_after_seconds=0)
    async with httpx.AsyncClient() as http:
        published = (await http.get(f"{idp_sqlite.issuer}/jwks")).json()["keys"]
    assert len(published) == 1

    asked = await browser.get(
        "/logout",
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": RETURN_TO, "state": "s-2"},
    )
    assert asked.status_code == 200 and "Sign out of Kizuna?" in asked.text
    assert await still_signed_in(browser)  # asking signs nobody out

    confirmed = await browser.post("/logout", data=form_fields(asked.text, "/logout"))
    assert confirmed.status_code == 303 and confirmed.headers["location"] == RETURN_TO + "?state=s-2"
    assert not await still_signed_in(browser)


async def test_hints_that_are_not_this_ops_id_tokens_only_ask(idp_sqlite: Idp) -> None:
    browser, tokens = await signed_in_with_id_token(idp_sqlite, "not-id-token@example.com")
    provider = idp_sqlite.provider
    id_claims = unverified_claims(tokens["id_token"])
    foreign_issuer = Issuer("http://127.0.0.1:1", provider.settings.kizuna_audience, provider.keys)
    for hint in (
        tokens["access_token"],  # signed by this OP, but an access token (typ at+jwt, aud kizuna)
        foreign_issuer.sign({**id_claims, "iss": "http://127.0.0.1:1"}),  # another issuer
        provider.issuer.sign(id_claims, typ="logout+jwt"),  # not an ID token
        provider.issuer.sign({**id_claims, "aud": "nobody"}),  # for a client this OP does not know
        "not.a.jwt",
    ):
        response = await browser.get("/logout", params={"id_token_hint": hint})
        assert response.status_code == 200 and "Sign out of Kizuna?" in response.text
        assert await still_signed_in(browser)
