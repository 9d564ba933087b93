"""`make up` runs NATS with authentication: every service connects as its own user, a local
process without credentials is refused, and one with shop's credentials cannot request an erasure
or a credit in another's name; the demo data (members registered at identity, read by points and
fintech) flows without a single permission violation."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import nats
import nats.errors
import pytest
from kizuna.kit import declaration, natsauth
from kizuna.kit.testing import devstack_port_offset, running_devstack

ROOT = Path(__file__).resolve().parents[2]
# Fixed ports shifted by an offset, like tests/test_make_up.py: one stack at a time.
pytestmark = [pytest.mark.long(95), pytest.mark.xdist_group("fixed-ports")]
DECLARATIONS = declaration.discover()


def _pick_offset() -> int:
    return devstack_port_offset(DECLARATIONS)


async def _attack(nats_url: str, passwords: dict[str, str]) -> list[str]:
    for credentials in ({}, {"user": "shop", "password": "guessed"}):
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(nats_url, **credentials, allow_reconnect=False, max_reconnect_attempts=0)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    shop = await nats.connect(
        **natsauth.connect_options("shop", nats_url, "shop", passwords["shop"]), error_cb=on_error
    )
    try:
        js = shop.jetstream(timeout=1)
        for subject in ("identity.member.erasure_requested", "points.credit.requested.fintech"):
            with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
                await js.publish(subject, b"forged")
        await shop.flush()
        await asyncio.sleep(0.2)
    finally:
        await shop.close()
    return errors


def test_make_up_runs_nats_with_a_user_per_service(tmp_path: Path) -> None:
    offset = _pick_offset()
    data_dir = tmp_path / "data"
    with running_devstack(data_dir, offset, cwd=ROOT, ready_within=180, start_timeout=120) as output:
        text = "".join(output)
        nats_url = re.search(r"nats\s+(nats://\S+)", text)
        assert nats_url, text
        # The passwords and the server's configuration are the owner's alone.
        passwords = json.loads((data_dir / "nats-passwords.json").read_text())
        assert set(passwords) == {d.name for d in DECLARATIONS}
        for secret_file in ("nats-passwords.json", "nats.conf"):
            assert (data_dir / secret_file).stat().st_mode & 0o777 == 0o600
        errors = asyncio.run(_attack(nats_url[1], passwords))
        for subject in ("identity.member.erasure_requested", "points.credit.requested.fintech"):
            assert any(f'permissions violation for publish to "{subject}"' in e for e in errors), errors
        # Every service is ready, so it authenticated (the server takes no anonymous client) as
        # itself; the demo data flowed without a permission violation, and no log holds a password.
        nats_log = (data_dir / "logs" / "nats.log").read_text()
        violations = [line for line in nats_log.splitlines() if "Violation" in line]
        assert len(violations) == 2 and all('"$G/user:shop"' in line for line in violations), violations
        for d in DECLARATIONS:
            log = (data_dir / "logs" / f"{d.name}.log").read_text()
            assert "permissions violation" not in log.lower(), d.name
            assert not [name for name, secret in passwords.items() if secret in log + nats_log], d.name
