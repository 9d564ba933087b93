"""Admin commands: `python -m identity rotate-keys`, `python -m identity reencrypt-keys` and
`python -m identity register-client '<json>'`."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from kizuna.kit.db import Database, utcnow

from identity.clients import ClientSpec, ScopeCatalogue, upsert
from identity.keys import KeyEncryptionKeys, KeyRing, load_key_encryption_keys
from identity.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def _migrate(settings: Settings) -> None:
    """Commands may run before the service ever started; the schema must exist (blocking)."""
    from kizuna.kit import migrations  # not at import: the serving process never needs Alembic

    migrations.upgrade(settings.database_url_for("identity"), MIGRATIONS)


def _database(settings: Settings) -> Database:
    return Database(settings.database_url_for("identity"))


def key_encryption_keys(settings: Settings) -> KeyEncryptionKeys:
    return load_key_encryption_keys(
        settings.identity_key_encryption_keys,
        settings.identity_key_encryption_key,
        settings.kizuna_issuer,
        settings.kizuna_data_dir,
    )


def max_token_seconds(settings: Settings) -> int:
    """The longest lifetime of anything a key signs: a retired key stays published this long."""
    return max(settings.identity_access_token_seconds, settings.identity_id_token_seconds, 120)


async def rotate_keys_async(settings: Settings, publish_seconds: int | None = None) -> str:
    db = _database(settings)
    try:
        ring = KeyRing(db, key_encryption_keys(settings), utcnow)
        await ring.reload()
        publish = settings.identity_key_publish_seconds if publish_seconds is None else publish_seconds
        return await ring.rotate(publish_seconds=publish, retire_after_seconds=max_token_seconds(settings))
    finally:
        await db.dispose()


def rotate_keys(settings: Settings, args: list[str]) -> int:
    """Add the next signing key: published now, signing after IDENTITY_KEY_PUBLISH_SECONDS."""
    parser = argparse.ArgumentParser(prog="python -m identity rotate-keys")
    parser.add_argument("--publish-seconds", type=int, default=None)
    ns = parser.parse_args(args)
    _migrate(settings)
    kid = asyncio.run(rotate_keys_async(settings, ns.publish_seconds))
    print(json.dumps({"kid": kid}))
    return 0


async def reencrypt_keys_async(settings: Settings) -> dict[str, int | str]:
    db = _database(settings)
    try:
        ring = KeyRing(db, key_encryption_keys(settings), utcnow)
        counts = await ring.reencrypt()
        return {"version": ring.kek.current_version, **counts}
    finally:
        await db.dispose()


def reencrypt_keys(settings: Settings, args: list[str]) -> int:
    """Re-encrypt every stored signing key under the current key-encryption key version (the first
    of IDENTITY_KEY_ENCRYPTION_KEYS); afterwards older versions can be removed (see the README)."""
    parser = argparse.ArgumentParser(prog="python -m identity reencrypt-keys")
    parser.parse_args(args)
    _migrate(settings)
    print(json.dumps(asyncio.run(reencrypt_keys_async(settings))))
    return 0


def register_client(settings: Settings, args: list[str]) -> int:
    """Register or update a client from JSON (see clients.py); prints the generated secret once."""
    parser = argparse.ArgumentParser(prog="python -m identity register-client")
    parser.add_argument("spec", help="client JSON, or @file.json")
    ns = parser.parse_args(args)
    raw = Path(ns.spec[1:]).read_text() if ns.spec.startswith("@") else ns.spec
    spec = ClientSpec.model_validate_json(raw)

    async def run() -> dict[str, str | None]:
        db = _database(settings)
        try:
            async with db.transaction() as session:
                client, secret = await upsert(session, spec, utcnow(), ScopeCatalogue.from_json(settings.kizuna_scopes))
            return {"client_id": client.id, "client_secret": secret}
        finally:
            await db.dispose()

    _migrate(settings)
    print(json.dumps(asyncio.run(run())))
    return 0
