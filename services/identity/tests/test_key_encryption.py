"""The key-encryption key is a versioned set: a new version encrypts and signs from the moment it
is added while everything made under the old one (signing keys at rest, session and device
cookies, CSRF tokens, email links) still works; `reencrypt-keys` moves the stored signing keys to
the current version, after which the old version can be removed. Outside local development
identity refuses to start without a key."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from identity.keys import KeyEncryptionKeyError, KeyRing, SigningKey, local_development, parse_key_set
from identity.settings import Settings
from kizuna.kit.db import utcnow
from kizuna.kit.testing import free_port
from sqlmodel import select

from .identity_support import (
    SVC_SECRET,
    csrf_of,
    identity_settings,
    reset_streams,
    running_identity,
    sign_up,
)

SESSION_COOKIE = "kz_idp_session"
KEY = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")  # a well-formed key


def new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


async def signing_kid(issuer: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{issuer}/token", auth=("svc", SVC_SECRET), data={"grant_type": "client_credentials"}
        )
    assert response.status_code == 200, response.text
    header = response.json()["access_token"].split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


async def stored_versions(settings: Settings) -> list[str | None]:
    from kizuna.kit.db import Database

    db = Database(settings.database_url)
    try:
        async with db.sessions() as session:
            return [row.kek_version for row in (await session.exec(select(SigningKey))).all()]
    finally:
        await db.dispose()


def command_env(settings: Settings, keys: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_KEY_ENCRYPTION_KEY")}
    return {
        **env,
        "DATABASE_URL": settings.database_url,
        "KIZUNA_DATA_DIR": str(settings.kizuna_data_dir),
        "NATS_URL": settings.nats_url,
        "KIZUNA_ISSUER": settings.kizuna_issuer,
        "IDENTITY_KEY_ENCRYPTION_KEYS": keys,
    }


async def test_a_new_key_version_keeps_the_old_ones_data_working_until_reencrypted_and_removed(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    await reset_streams(nats_url, "IDENTITY")
    k1, k2 = new_key(), new_key()
    port = free_port()

    def settings(keys: str) -> Settings:
        return identity_settings(nats_url, database_url, tmp_path, http_port=port, identity_key_encryption_keys=keys)

    browser = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", follow_redirects=False, timeout=10)

    # Under v1 alone: a member signs up; a form, an email link and a signing key are made under v1.
    async with running_identity(settings(f"v1:{k1}")) as idp:
        assert (await sign_up(browser, "rotate@example.com", name="Ren")).status_code == 303
        v1_cookie = browser.cookies[SESSION_COOKIE]
        v1_form = csrf_of((await browser.get("/account")).text)
        member = await idp.provider.member(await _member_id(browser))
        assert member is not None
        v1_link = idp.provider.email.link(member)
        kid = await signing_kid(idp.issuer)
    assert await stored_versions(settings("")) == ["v1"]

    # v2 added (and current): everything made under v1 still works, new cookies are v2's.
    async with running_identity(settings(f"v2:{k2},v1:{k1}")) as idp:
        account = await browser.get("/account")
        assert account.status_code == 200 and "Ren" in account.text
        renewed = browser.cookies[SESSION_COOKIE]
        assert renewed != v1_cookie  # signed again under v2 on the way
        saved = await browser.post("/account/profile", data={"display_name": "Ren A", "csrf_token": v1_form})
        assert saved.status_code == 200 and "Your profile is saved." in saved.text
        confirmed = await browser.get("/verify-email?" + v1_link.split("?", 1)[1])
        assert confirmed.status_code == 200 and "is confirmed" in confirmed.text
        assert await signing_kid(idp.issuer) == kid  # the v1-encrypted signing key is read
        # A signing key added now is encrypted under v2.
        await idp.provider.keys.rotate(publish_seconds=3600, retire_after_seconds=600)
    assert sorted(v or "" for v in await stored_versions(settings(""))) == ["v1", "v2"]

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "identity", "reencrypt-keys"],
        env=command_env(settings(""), f"v2:{k2},v1:{k1}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "version": "v2",
        "reencrypted": 1,
        "already_current": 1,
    }
    assert await stored_versions(settings("")) == ["v2", "v2"]

    # v1 removed: the member is still signed in, the signing keys still sign, forms still work;
    # what only v1 could vouch for is refused now.
    async with running_identity(settings(f"v2:{k2}")) as idp:
        account = await browser.get("/account")
        assert account.status_code == 200 and "Ren A" in account.text
        assert browser.cookies[SESSION_COOKIE] == renewed
        assert await signing_kid(idp.issuer) == kid
        saved = await browser.post(
            "/account/profile", data={"display_name": "Ren B", "csrf_token": csrf_of(account.text)}
        )
        assert saved.status_code == 200 and "Your profile is saved." in saved.text
        refused = await browser.post("/account/profile", data={"display_name": "X", "csrf_token": v1_form})
        assert refused.status_code == 403
        old = httpx.AsyncClient(base_url=idp.issuer, cookies={SESSION_COOKIE: v1_cookie}, follow_redirects=False)
        assert (await old.get("/account")).status_code == 302
        await old.aclose()
    await browser.aclose()

    # A key set without the version the stored keys are encrypted under cannot read them.
    from kizuna.kit.db import Database

    db = Database(settings("").database_url)
    try:
        with pytest.raises(KeyEncryptionKeyError, match="version v2"):
            await KeyRing(db, parse_key_set(f"v3:{new_key()}"), utcnow).reload()
    finally:
        await db.dispose()


async def _member_id(browser: httpx.AsyncClient) -> str:
    page = (await browser.get("/account")).text
    return page.split("data-member-id>")[1].split("<")[0]


async def test_without_a_key_identity_refuses_to_start_outside_local_development(nats_url: str, tmp_path: Path) -> None:
    env = command_env(identity_settings(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'identity.db'}", tmp_path), keys="")
    env.pop("IDENTITY_KEY_ENCRYPTION_KEYS")
    env.update(HTTP_PORT=str(free_port()), GRPC_PORT=str(free_port()), KIZUNA_ISSUER="https://id.kizuna.example")
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "identity"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "missing required setting IDENTITY_KEY_ENCRYPTION_KEYS" in result.stderr + result.stdout
    assert not (tmp_path / "identity-key-encryption-key").exists()  # nothing generated


def test_local_development_is_an_issuer_at_a_loopback_http_address() -> None:
    assert local_development("http://127.0.0.1:8000") and local_development("http://localhost:8000")
    assert not local_development("https://127.0.0.1:8000")
    assert not local_development("http://identity:8000")
    assert not local_development("https://id.kizuna.example")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "v1",
        KEY,
        "v1:c2hvcnQ",  # 5 bytes
        f"v1:{KEY},v1:{KEY}",
        f"bad version:{KEY}",
    ],
)
def test_a_malformed_key_set_is_refused_with_the_variable_named(raw: str) -> None:
    with pytest.raises(KeyEncryptionKeyError, match="IDENTITY_KEY_ENCRYPTION_KEYS"):
        parse_key_set(raw)


def test_the_current_version_is_the_first() -> None:
    keys = parse_key_set(f"2026-12:{new_key()}, 2026-06:{new_key()}")
    assert keys.current_version == "2026-12" and [v for v, _ in keys.versions] == ["2026-12", "2026-06"]
    assert keys.secrets("csrf")[0] != keys.secrets("csrf")[1]
