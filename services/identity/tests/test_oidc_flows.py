"""A conforming OIDC client that is not our code (Authlib's AsyncOAuth2Client) against identity:
authorization code + PKCE, refresh, userinfo, introspection, revocation, client credentials."""

from __future__ import annotations

from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from identity.members import Member
from joserfc import jwt
from joserfc.jwk import KeySet

from .identity_support import SVC_SECRET, WEB_REDIRECT, WEB_SECRET, Idp, sign_up


async def discover(idp: Idp) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        document: dict[str, Any] = (await http.get(f"{idp.issuer}/.well-known/openid-configuration")).json()
    return document


async def test_code_pkce_refresh_userinfo_introspection_revocation_with_authlib_client(idp: Idp) -> None:
    meta = await discover(idp)
    assert meta["issuer"] == idp.issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]
    browser = idp.browser()
    await sign_up(browser, "Hana@Example.com ", name="Hana")

    client = AsyncOAuth2Client(
        client_id="web",
        client_secret=WEB_SECRET,
        scope="openid profile email offline_access points:read",
        redirect_uri=WEB_REDIRECT,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )
    verifier = "v" * 20 + "erifier-0123456789-abcdefghijklmnop"
    url, _state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce="n-0S6")
    assert "code_challenge=" + create_s256_code_challenge(verifier) in url
    redirect = await browser.get(url)
    assert redirect.status_code == 302
    location = redirect.headers["location"]
    assert location.startswith(WEB_REDIRECT + "?")

    token = await client.fetch_token(meta["token_endpoint"], authorization_response=location, code_verifier=verifier)
    assert token["token_type"].lower() == "bearer"
    keys = KeySet.import_key_set((await httpx.AsyncClient().get(meta["jwks_uri"])).json())

    access = jwt.decode(token["access_token"], keys, algorithms=["ES256"])
    assert access.header["typ"] == "at+jwt" and access.header["kid"] in {k.kid for k in keys.keys}
    member_id = access.claims["sub"]
    assert member_id.startswith("mbr_") and len(member_id) == 30
    assert access.claims["aud"] == "kizuna" and access.claims["client_id"] == "web"
    assert access.claims["iss"] == idp.issuer
    assert set(access.claims["scope"].split()) == {"openid", "profile", "email", "offline_access", "points:read"}
    assert {"exp", "iat", "jti"} <= access.claims.keys()

    id_token = jwt.decode(token["id_token"], keys, algorithms=["ES256"])
    assert id_token.claims["sub"] == member_id and id_token.claims["aud"] == "web"
    assert id_token.claims["nonce"] == "n-0S6" and id_token.claims["sid"]
    assert id_token.claims["email"] == "hana@example.com"

    info = (await client.get(meta["userinfo_endpoint"])).json()
    updated_at = info.pop("updated_at")
    assert info == {
        "sub": member_id,
        "name": "Hana",
        "preferred_username": "Hana",
        "email": "hana@example.com",
        "email_verified": False,
    }
    async with idp.runtime.db.sessions() as session:
        member = await session.get(Member, member_id)
    assert member is not None and updated_at == int(member.updated_at.timestamp())
    posted = await httpx.AsyncClient().post(meta["userinfo_endpoint"], data={"access_token": token["access_token"]})
    assert posted.json()["sub"] == member_id

    first_refresh = token["refresh_token"]
    refreshed = await client.refresh_token(meta["token_endpoint"])
    assert refreshed["refresh_token"] != first_refresh
    assert jwt.decode(refreshed["access_token"], keys).claims["sub"] == member_id
    # A fresh ID token with the refresh (openid was granted): same sub and session, original auth_time.
    again = jwt.decode(refreshed["id_token"], keys, algorithms=["ES256"]).claims
    assert again["sub"] == member_id and again["aud"] == "web" and again["sid"] == id_token.claims["sid"]
    assert again["auth_time"] == id_token.claims["auth_time"] and "nonce" not in again
    assert again["at_hash"] != id_token.claims["at_hash"]

    introspected = (
        await client.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"])
    ).json()
    assert introspected["active"] is True and introspected["sub"] == member_id and introspected["client_id"] == "web"
    rotated = (
        await client.introspect_token(
            meta["introspection_endpoint"], token=first_refresh, token_type_hint="refresh_token"
        )
    ).json()
    assert rotated == {"active": False}

    revoked = await client.revoke_token(
        meta["revocation_endpoint"], token=refreshed["refresh_token"], token_type_hint="refresh_token"
    )
    assert revoked.status_code == 200
    after = (await client.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"])).json()
    assert after == {"active": False}
    assert (await client.get(meta["userinfo_endpoint"])).status_code == 401


async def test_client_credentials_token_has_client_as_subject(idp: Idp) -> None:
    meta = await discover(idp)
    client = AsyncOAuth2Client(
        client_id="svc", client_secret=SVC_SECRET, token_endpoint_auth_method="client_secret_post"
    )
    token = await client.fetch_token(meta["token_endpoint"], grant_type="client_credentials", scope="points:credit")
    assert "refresh_token" not in token
    claims = jwt.decode(token["access_token"], KeySet.import_key_set(idp.provider.keys.jwks())).claims
    assert claims["sub"] == "svc" == claims["client_id"] and claims["scope"] == "points:credit"
    assert claims["aud"] == "kizuna"
    denied = await httpx.AsyncClient().post(
        meta["token_endpoint"],
        auth=("svc", SVC_SECRET),
        data={"grant_type": "client_credentials", "scope": "points:spend"},
    )
    assert denied.status_code == 400 and denied.json()["error"] == "invalid_scope"
    wrong = await httpx.AsyncClient().post(
        meta["token_endpoint"], auth=("svc", "not-the-secret"), data={"grant_type": "client_credentials"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
