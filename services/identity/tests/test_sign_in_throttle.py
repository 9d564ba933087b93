"""The sign-in throttle stops guessing but not the owner (identity.throttle, README "Sign-in
throttling"). Attackers are other browsers at other addresses (X-Forwarded-For from the trusted
local proxy), exactly as identity sees them behind an ingress."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
from identity import throttle

from .identity_support import PASSWORD, Idp, csrf_of, sign_up

EMAIL = "owner@example.com"


async def attempt(browser: httpx.AsyncClient, password: str, address: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    page = await browser.get("/signin", headers=headers)
    return await browser.post(
        "/signin",
        data={"email": EMAIL, "password": password, "csrf_token": csrf_of(page.text)},
        headers=headers,
    )


def freeze(idp: Idp) -> list[datetime]:
    """Pin identity's clock; returns a one-item list to move it."""
    now = [idp.provider.now()]
    idp.provider.set_clock(lambda: now[0])
    return now


async def test_wrong_passwords_from_attackers_do_not_lock_the_owner_out(idp: Idp) -> None:
    """The issue's sequence: wrong passwords for the owner's email from attacker addresses used
    to lock the owner out for 15 minutes; the owner's known device still signs in at once."""
    owner = idp.browser()
    assert (await sign_up(owner, EMAIL)).status_code == 303  # this browser becomes a known device
    assert throttle.DEVICE_COOKIE in owner.cookies
    await owner.post("/signout", data={"csrf_token": csrf_of((await owner.get("/account")).text)})
    freeze(idp)

    for n in range(20):
        attacker = idp.browser()
        answer = await attempt(attacker, "wrong password!", f"203.0.113.{n + 1}")
        assert answer.status_code in (401, 429)
    # The attackers are throttled now ...
    assert (await attempt(idp.browser(), PASSWORD, "198.51.100.7")).status_code == 429
    # ... but the owner's device is not, even from an address never seen before.
    back = await attempt(owner, PASSWORD, "192.0.2.50")
    assert back.status_code == 303, back.text
    assert (await owner.get("/account")).status_code == 200


async def test_the_owners_usual_address_still_signs_in_without_the_device(idp: Idp) -> None:
    owner = idp.browser()
    await sign_up(owner, EMAIL)
    assert (await attempt(idp.browser(), PASSWORD, "192.0.2.10")).status_code == 303  # a usual address now
    freeze(idp)
    for n in range(10):
        await attempt(idp.browser(), "wrong password!", f"203.0.113.{n + 1}")

    fresh_browser_at_home = idp.browser()
    assert (await attempt(fresh_browser_at_home, PASSWORD, "192.0.2.10")).status_code == 303


async def test_an_attacker_is_throttled_progressively(idp: Idp) -> None:
    settings = idp.runtime.settings
    free = settings.identity_signin_max_failures_account
    base = settings.identity_signin_base_delay_seconds
    await sign_up(idp.browser(), EMAIL)
    now = freeze(idp)

    for n in range(free):  # spread over addresses: they count together for the account
        assert (await attempt(idp.browser(), "wrong password!", f"203.0.113.{n + 1}")).status_code == 401

    waits = []
    for step in range(4):
        refused = await attempt(idp.browser(), "wrong password!", f"198.51.100.{step + 1}")
        assert refused.status_code == 429
        assert "Try again in" in refused.text
        wait = int(refused.headers["Retry-After"])
        waits.append(wait)
        now[0] += timedelta(seconds=wait - 1)
        assert (await attempt(idp.browser(), "wrong password!", "198.51.100.200")).status_code == 429
        now[0] += timedelta(seconds=1)
        assert (await attempt(idp.browser(), "wrong password!", "198.51.100.201")).status_code == 401

    assert waits == [base, base * 2, base * 4, base * 8]
    # The right password from an unknown place waits too: the guesser cannot tell.
    assert (await attempt(idp.browser(), PASSWORD, "198.51.100.202")).status_code == 429


async def test_the_owners_device_has_its_own_progressive_limit(idp: Idp) -> None:
    owner = idp.browser()
    await sign_up(owner, EMAIL)
    free = idp.runtime.settings.identity_signin_max_failures_account
    now = freeze(idp)
    for _ in range(free):
        assert (await attempt(owner, "wrong password!")).status_code == 401
    refused = await attempt(owner, PASSWORD)
    assert refused.status_code == 429
    now[0] += timedelta(seconds=int(refused.headers["Retry-After"]))
    assert (await attempt(owner, PASSWORD)).status_code == 303


async def test_a_device_cookie_counts_only_for_its_own_account_and_cannot_be_forged(idp: Idp) -> None:
    await sign_up(idp.browser(), EMAIL)
    other = idp.browser()
    await sign_up(other, "someone-else@example.com")  # a known device, of another account
    forged = idp.browser()
    forged.cookies.set(throttle.DEVICE_COOKIE, "eyJkIjoieCIsImEiOltdfQ.forged.signature")
    freeze(idp)
    for n in range(10):
        await attempt(idp.browser(), "wrong password!", f"203.0.113.{n + 1}")

    assert (await attempt(other, PASSWORD, "203.0.113.99")).status_code == 429
    assert (await attempt(forged, PASSWORD, "203.0.113.98")).status_code == 429


def test_the_delay_doubles_up_to_the_maximum() -> None:
    policy = throttle.Policy(base_delay_seconds=30, max_delay_seconds=900)
    start = datetime(2026, 1, 1)
    failures = [start] * 5
    assert throttle.wait_after(failures[:4], start, free=5, policy=policy) == 0
    assert throttle.wait_after(failures, start, free=5, policy=policy) == 30
    assert throttle.wait_after([*failures, start], start, free=5, policy=policy) == 60
    assert throttle.wait_after([start] * 30, start, free=5, policy=policy) == 900
    assert throttle.wait_after([start] * 30, start + timedelta(seconds=901), free=5, policy=policy) == 0
    assert throttle.streak([(start, False), (start, True), (start, False)]) == [start]
