"""The web pages ask for sign-in through the kit's OIDC client and serve the shared layout."""

from __future__ import annotations

import pytest

from .fintech_world import FintechClient


@pytest.mark.parametrize("path", ["/card", "/bank", "/invest"])
async def test_pages_send_a_browser_without_a_session_to_sign_in(fintech: FintechClient, path: str) -> None:
    resp = await fintech.http.get(path, headers={"accept": "text/html"})
    assert resp.status_code == 303 and resp.headers["location"].startswith(f"/auth/login?next=%2F{path[1:]}")
    css = await fintech.http.get("/_kizuna/kizuna.css")
    assert css.status_code == 200
