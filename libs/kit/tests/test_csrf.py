"""CSRF tokens on signed-in members' forms: bound to the session cookie, refused when absent or foreign."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from fastapi import FastAPI, Request
from kizuna.kit.csrf import CsrfChecked, csrf_token
from kizuna.kit.oidc_client import WebSignIn


def make_app() -> tuple[FastAPI, WebSignIn]:
    rp = WebSignIn(
        issuer="http://id.test",
        client_id="shop",
        client_secret="s3cret",
        base_url="http://shop.test",
        db=None,  # type: ignore[arg-type]  # CSRF tokens never reach the database.
    )
    app = FastAPI()
    app.state.runtime = SimpleNamespace(state={"web_sign_in": rp})

    @app.get("/form")
    async def form(request: Request) -> dict[str, str]:
        return {"token": csrf_token(request)}

    @app.post("/buy", dependencies=[CsrfChecked])
    async def buy() -> dict[str, str]:
        return {"status": "bought"}

    return app, rp


async def test_form_posts_need_the_sessions_token() -> None:
    app, rp = make_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as alice:
        alice.cookies.set(rp.session_cookie, "alice-session")
        token = (await alice.get("/form")).json()["token"]
        assert token
        assert (await alice.post("/buy", data={"csrf_token": token})).status_code == 200
        assert (await alice.post("/buy", data={})).status_code == 403
        assert (await alice.post("/buy", data={"csrf_token": "0" * 64})).status_code == 403
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as mallory:
        mallory.cookies.set(rp.session_cookie, "mallory-session")
        # A token minted for another session does not work here.
        assert (await mallory.post("/buy", data={"csrf_token": token})).status_code == 403
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as anonymous:
        assert (await anonymous.get("/form")).json()["token"] == ""
        assert (await anonymous.post("/buy", data={"csrf_token": ""})).status_code == 403
    await rp.aclose()
