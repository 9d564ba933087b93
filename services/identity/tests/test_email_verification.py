"""Email verification: a signed link from the mail drop confirms the address; userinfo and ID
tokens say `email_verified`; an email change clears it; forged, stale and other-address links fail."""

from __future__ import annotations

import re
from email import message_from_bytes
from pathlib import Path

import httpx

from .identity_support import WEB_SECRET, Idp, code_for, csrf_of, exchange, sign_up

LINK = re.compile(r"(http://\S+/verify-email\?token=\S+)")


def mails_to(idp: Idp, address: str) -> list[str]:
    drop = Path(idp.runtime.settings.kizuna_data_dir) / "mail"
    bodies = []
    for path in sorted(drop.glob("*.eml")):
        message = message_from_bytes(path.read_bytes())
        if message["To"] == address:
            payload = message.get_payload(decode=True)
            assert isinstance(payload, bytes)
            bodies.append(payload.decode())
    return bodies


async def email_verified(idp: Idp, browser: httpx.AsyncClient) -> bool:
    code = await code_for(browser, scope="openid email")
    token = (await exchange(idp, code, secret=WEB_SECRET)).json()
    async with httpx.AsyncClient() as http:
        info = await http.get(f"{idp.issuer}/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"})
    return bool(info.json()["email_verified"])


async def test_email_is_verified_by_the_link_and_unverified_by_a_change(idp_sqlite: Idp) -> None:
    idp = idp_sqlite
    browser = idp.browser()
    await sign_up(browser, "yui@example.com", name="Yui")
    assert not await email_verified(idp, browser)
    [mail] = mails_to(idp, "yui@example.com")
    link = LINK.search(mail)
    assert link, mail

    token = link.group(1).split("token=")[1]
    forged = await browser.get("/verify-email", params={"token": token[:-3] + "AAA"})
    assert forged.status_code == 400
    assert not await email_verified(idp, browser)

    confirmed = await browser.get(link.group(1).removeprefix(idp.issuer))
    assert confirmed.status_code == 200 and "yui@example.com is confirmed" in confirmed.text
    assert await email_verified(idp, browser)

    # A new address is unproven until its own link is opened; the old link no longer applies.
    account = await browser.get("/account")
    changed = await browser.post(
        "/account/email",
        data={"email": "yui2@example.com", "password": "correct horse battery", "csrf_token": csrf_of(account.text)},
    )
    assert changed.status_code == 200
    assert not await email_verified(idp, browser)
    assert (await browser.get(link.group(1).removeprefix(idp.issuer))).status_code == 400
    [new_mail] = mails_to(idp, "yui2@example.com")
    new_link = LINK.search(new_mail)
    assert new_link
    assert (await browser.get(new_link.group(1).removeprefix(idp.issuer))).status_code == 200
    assert await email_verified(idp, browser)
