"""When identity cannot be reached, a member starting to sign in gets a page that says so (503 with
Retry-After, in their language), not an Internal Server Error."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from kizuna.kit.testing import ServiceProcess, TestIssuer


def test_sign_in_with_identity_unreachable_is_a_page_asking_to_try_again(
    service_process: Callable[..., ServiceProcess], test_issuer: TestIssuer
) -> None:
    # A real web service (points) whose token verification works (JWKS from a real issuer) but whose
    # sign-in discovery points at a port nothing listens on: identity down for browsers.
    points = service_process(
        "points",
        env={
            "KIZUNA_ISSUER": test_issuer.issuer,
            "KIZUNA_JWKS_URL": f"{test_issuer.issuer}/jwks",
            "KIZUNA_DISCOVERY_URL": "http://127.0.0.1:1/.well-known/openid-configuration",
            "KIZUNA_CLIENT_SECRET": "s" * 40,
        },
    )
    for lang, words in (("en", "Sign-in is not available right now"), ("ja", "現在サインインできません")):
        response = httpx.get(f"{points.url}/auth/login", headers={"Accept-Language": lang}, timeout=30)
        assert response.status_code == 503, response.text[:500]
        assert response.headers["retry-after"] == "5"
        assert response.headers["content-type"].startswith("text/html")
        assert words in response.text
