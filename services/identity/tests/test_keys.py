"""Key rotation with overlap: the next key is published before it signs; tokens signed by the old
key verify until they expire; new tokens use the new key. Rotation is a command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from kizuna.kit.auth import TokenVerifier
from kizuna.kit.db import utcnow
from kizuna.kit.errors import Unauthenticated

from .identity_support import SVC_SECRET, Idp


async def service_token(idp: Idp) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{idp.issuer}/token",
            auth=("svc", SVC_SECRET),
            data={"grant_type": "client_credentials", "scope": "points:read"},
        )
    return str(response.json()["access_token"])


def kid_of(token: str) -> str:
    import base64

    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


async def jwks_kids(idp: Idp) -> list[str]:
    async with httpx.AsyncClient() as http:
        return [k["kid"] for k in (await http.get(f"{idp.issuer}/jwks")).json()["keys"]]


async def test_rotation_publishes_first_signs_later_and_keeps_old_key_until_its_tokens_expire(idp: Idp) -> None:
    settings = idp.runtime.settings
    old_token = await service_token(idp)
    old_kid = kid_of(old_token)

    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KIZUNA_DATA_DIR": str(settings.kizuna_data_dir),
        "NATS_URL": settings.nats_url,
        "KIZUNA_ISSUER": settings.kizuna_issuer,
        "IDENTITY_KEY_PUBLISH_SECONDS": "60",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "identity", "rotate-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    new_kid = json.loads(result.stdout.strip().splitlines()[-1])["kid"]
    await idp.provider.keys.reload()  # what the periodic reload job does on every replica

    # Published before it signs.
    assert set(await jwks_kids(idp)) == {old_kid, new_kid}
    assert kid_of(await service_token(idp)) == old_kid

    # After the publish delay the new key signs; the old one still verifies its tokens.
    start = utcnow()
    idp.provider.set_clock(lambda: start + timedelta(seconds=61))
    new_token = await service_token(idp)
    assert kid_of(new_token) == new_kid
    verifier = TokenVerifier(idp.issuer, refetch_floor_seconds=0)
    in_61s = time.time() + 61
    assert (await verifier.verify(old_token, now=in_61s)).subject == "svc"
    assert (await verifier.verify(new_token, now=in_61s)).subject == "svc"

    # Once every token the old key signed has expired, it leaves the JWKS.
    idp.provider.set_clock(lambda: start + timedelta(seconds=61 + settings.identity_access_token_seconds + 121))
    assert await jwks_kids(idp) == [new_kid]
    later = TokenVerifier(idp.issuer, refetch_floor_seconds=0)
    with pytest.raises(Unauthenticated):
        await later.verify(old_token, now=in_61s)
    await verifier.aclose()
    await later.aclose()


async def test_private_keys_are_encrypted_at_rest_and_readiness_reports_keys(idp_sqlite: Idp) -> None:
    from identity.keys import SigningKey
    from sqlmodel import select

    async with idp_sqlite.runtime.db.sessions() as session:
        rows = (await session.exec(select(SigningKey))).all()
    assert rows and all(b'"d"' not in row.private_jwk_encrypted for row in rows)
    async with httpx.AsyncClient() as http:
        ready = (await http.get(f"{idp_sqlite.issuer}/readyz")).json()
    assert ready["checks"]["signing_key"] == "ok"
