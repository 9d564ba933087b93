"""How the token endpoint reads its request body (RFC 6749 §3.2, §4.4.2): a urlencoded form, each
parameter once; anything else is refused with a 400 and issues nothing."""

from __future__ import annotations

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet

from .identity_support import SVC_SECRET, Idp, code_for, exchange, pkce_pair, sign_up

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_a_repeated_parameter_is_refused(idp_sqlite: Idp) -> None:
    async with httpx.AsyncClient(base_url=idp_sqlite.issuer) as http:
        for body in [
            "grant_type=client_credentials&scope=points%3Acredit&scope=points%3Aread",
            "grant_type=client_credentials&grant_type=client_credentials",
            f"grant_type=client_credentials&client_id=svc&client_secret={SVC_SECRET}&client_id=svc",
        ]:
            response = await http.post("/token", content=body, headers=FORM, auth=("svc", SVC_SECRET))
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"] == "invalid_request"
            assert "access_token" not in response.json()
            assert response.headers["cache-control"] == "no-store"


async def test_a_body_that_is_not_urlencoded_text_is_refused(idp_sqlite: Idp) -> None:
    async with httpx.AsyncClient(base_url=idp_sqlite.issuer) as http:
        for body in [
            b"grant_type=client_credentials&scope=points%3Acredit%FF",  # percent-encoded, not UTF-8
            b"grant_type=client_credentials&scope=points:cr\xc3\xa9dit",  # raw non-ASCII bytes
        ]:
            response = await http.post("/token", content=body, headers=FORM, auth=("svc", SVC_SECRET))
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"] == "invalid_request"


async def test_client_credentials_in_the_body_and_unrelated_repeats_are_accepted(idp_sqlite: Idp) -> None:
    """client_secret_post, a charset in the content type, and a repeated parameter the grant does not
    use (extensions may repeat theirs, RFC 8707 `resource` for one)."""
    body = f"grant_type=client_credentials&client_id=svc&client_secret={SVC_SECRET}&scope=points%3Acredit"
    async with httpx.AsyncClient(base_url=idp_sqlite.issuer) as http:
        response = await http.post(
            "/token",
            content=body + "&x-extra=1&x-extra=2",
            headers={"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8"},
        )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        decoded = jwt.decode(token, KeySet.import_key_set(idp_sqlite.provider.keys.jwks()), algorithms=["ES256"])
        assert decoded.header["typ"] == "at+jwt"
        assert decoded.claims["client_id"] == "svc" and decoded.claims["scope"] == "points:credit"
        wrong = await http.post("/token", content=body.replace(SVC_SECRET, "not-the-secret"), headers=FORM)
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


async def test_tokens_of_each_type_carry_their_own_header(idp_sqlite: Idp) -> None:
    """Headers are encoded once per key and type: an ID token (typ JWT) issued between two access
    tokens keeps its type, and the access tokens keep theirs."""
    keys = KeySet.import_key_set(idp_sqlite.provider.keys.jwks())
    browser = idp_sqlite.browser()
    await sign_up(browser, "header@example.com")
    async with httpx.AsyncClient(base_url=idp_sqlite.issuer) as http:
        service = {"grant_type": "client_credentials", "scope": "points:credit"}
        first = (await http.post("/token", data=service, auth=("svc", SVC_SECRET))).json()["access_token"]
        verifier, challenge = pkce_pair()
        code = await code_for(browser, code_challenge=challenge, code_challenge_method="S256", nonce="n")
        exchanged = await exchange(idp_sqlite, code, verifier=verifier)
        assert exchanged.status_code == 200, exchanged.text
        second = (await http.post("/token", data=service, auth=("svc", SVC_SECRET))).json()["access_token"]
    id_token = exchanged.json()["id_token"]
    assert jwt.decode(id_token, keys, algorithms=["ES256"]).header["typ"] == "JWT"
    for token in (first, exchanged.json()["access_token"], second):
        assert jwt.decode(token, keys, algorithms=["ES256"]).header["typ"] == "at+jwt"
