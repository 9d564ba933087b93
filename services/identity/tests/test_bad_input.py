"""Malformed input at identity's edges gets a 4xx and changes nothing, as an attacker would send it:
a JWT whose header is JSON but not an object, Basic credentials that are not UTF-8, NUL bytes and
characters OAuth does not allow in authorization parameters, values beyond int64."""

from __future__ import annotations

import base64

import httpx
import pytest

from .identity_support import SVC_SECRET, WEB_REDIRECT, WEB_SECRET, Idp, sign_up


def _jwt_with_header(header: bytes) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join([b64(header), b64(b'{"sub":"mbr_x"}'), b64(b"signature")])


@pytest.mark.parametrize("header", [b"[1]", b"null", b"1", b'"alg"', b"{", b"\xff\xfe"])
async def test_a_token_whose_header_is_not_a_json_object_is_refused(idp_sqlite: Idp, header: bytes) -> None:
    token = _jwt_with_header(header)
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=idp_sqlite.issuer) as http:
        userinfo = await http.get("/userinfo", headers=bearer)
        assert userinfo.status_code == 401
        assert userinfo.json()["error"] == "invalid_token"
        admin = await http.get("/admin/clients", headers=bearer)
        assert admin.status_code == 401
        introspected = await http.post("/introspect", data={"token": token}, auth=("svc", SVC_SECRET))
        assert introspected.status_code == 200 and introspected.json() == {"active": False}
        revoked = await http.post("/revoke", data={"token": token}, auth=("web", WEB_SECRET))
        assert revoked.status_code == 200  # RFC 7009: an unknown token is not an error
        logout = await http.get("/logout", params={"id_token_hint": token})
        assert logout.status_code < 500


@pytest.mark.parametrize(
    "credentials",
    [b"\xff\xfe:\xff", b"web:\xc3", b"\x80", b"no-colon"],
    ids=["latin1", "truncated-utf8", "continuation-byte", "no-colon"],
)
async def test_basic_credentials_that_are_not_utf8_are_refused(idp_sqlite: Idp, credentials: bytes) -> None:
    header = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    async with httpx.AsyncClient(base_url=idp_sqlite.issuer) as http:
        for path, form in [
            ("/token", {"grant_type": "client_credentials"}),
            ("/token", {"grant_type": "authorization_code", "code": "x", "redirect_uri": WEB_REDIRECT}),
            ("/token", {"grant_type": "refresh_token", "refresh_token": "x"}),
            ("/introspect", {"token": "x"}),
            ("/revoke", {"token": "x"}),
        ]:
            response = await http.post(path, data=form, headers=header)
            assert response.status_code == 401, (path, form, response.text)
            assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("redirect_uri", WEB_REDIRECT + "\x00"),
        ("redirect_uri", "http://127.0.0.1:9/\u00e9"),
        ("redirect_uri", 'http://127.0.0.1:9/"'),
        ("redirect_uri", "http://127.0.0.1:9/\n"),
        ("response_type", "c\u00f6de"),
        ("scope", "openid \u00e9"),
        ("scope", "openid\x00"),
        ("client_id", "w\u00e9b"),
        ("state", "\x00"),
    ],
)
async def test_authorization_parameters_outside_oauths_characters_are_refused(
    idp_sqlite: Idp, name: str, value: str
) -> None:
    browser = idp_sqlite.browser()
    await sign_up(browser, "edge@example.com")
    query = {
        "response_type": "code",
        "client_id": "web",
        "redirect_uri": WEB_REDIRECT,
        "scope": "openid",
        "state": "s",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        name: value,
    }
    response = await browser.get("/authorize", params=query)
    assert response.status_code == 400, response.text
    assert "code=" not in response.headers.get("location", "")


async def test_token_request_parameters_outside_oauths_characters_are_refused(idp_sqlite: Idp) -> None:
    async with httpx.AsyncClient(base_url=idp_sqlite.issuer) as http:
        for form in [
            {"grant_type": "authorization_code", "code": "x", "redirect_uri": WEB_REDIRECT + "\x00"},
            {"grant_type": "\u00e9"},
            {"grant_type": "client_credentials", "scope": "points:read\x00"},
        ]:
            response = await http.post("/token", data=form, auth=("web", WEB_SECRET))
            assert response.status_code == 400, (form, response.text)


async def test_sign_in_and_sign_up_forms_with_nul_bytes_are_refused(idp_sqlite: Idp) -> None:
    browser = idp_sqlite.browser()
    page = await browser.get("/signup")
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    response = await browser.post(
        "/signup",
        data={"email": "nul\x00@example.com", "display_name": "N", "password": "a long password", "csrf_token": token},
    )
    assert response.status_code == 400
    async with idp_sqlite.provider.db.sessions() as session:
        from identity import members

        assert await members.by_email(session, "nul\x00@example.com") is None
    signin = await browser.post("/signin", data={"email": "x@example.com\x00", "password": "p", "csrf_token": token})
    assert signin.status_code == 400
