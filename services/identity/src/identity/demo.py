"""`python -m identity seed`: demo members for a local ecosystem (idempotent).

Creates a demo member, a merchant's staff member and a platform admin, prints their sign-in
details, and writes their member IDs to `<KIZUNA_DATA_DIR>/demo-members.json` so that other
services' seeds can give them roles (shop: merchant staff and admin). Demo passwords are random
per data dir, never fixed in code.
"""

from __future__ import annotations

import asyncio
import json
import secrets

from kizuna.kit.db import utcnow

from identity import members
from identity.admin import _database, _migrate
from identity.passwords import Passwords
from identity.settings import Settings

DEMO_MEMBERS = {
    "member": ("demo@kizuna.example", "Demo Member"),
    "merchant": ("merchant@kizuna.example", "Kumo Outdoor Staff"),
    "admin": ("admin@kizuna.example", "Platform Admin"),
}


async def _seed(settings: Settings) -> dict[str, dict[str, str]]:
    path = settings.kizuna_data_dir / "demo-members.json"
    known: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    passwords = Passwords(
        settings.identity_argon2_time_cost, settings.identity_argon2_memory_kib, settings.identity_argon2_parallelism
    )
    db = _database(settings)
    try:
        for role, (email, name) in DEMO_MEMBERS.items():
            async with db.transaction() as session:
                existing = await members.by_email(session, email)
                if existing is not None:
                    if role in known:
                        continue
                    raise SystemExit(f"{email} exists but its password is unknown here; remove it to re-seed")
                password = secrets.token_urlsafe(9)
                member = await members.register(
                    session, passwords, email=email, display_name=name, password=password, now=utcnow()
                )
                known[role] = {"member_id": member.id, "email": email, "password": password}
    finally:
        await db.dispose()
    settings.kizuna_data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(known, indent=2))
    return known


def seed(settings: Settings, args: list[str]) -> int:
    """Create the demo members (once) and print how to sign in as each."""
    _migrate(settings)
    known = asyncio.run(_seed(settings))
    for role, who in known.items():
        print(f"demo {role:<8} {who['email']} / {who['password']}  ({who['member_id']})")
    return 0
