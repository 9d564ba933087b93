"""Signing keys: ES256 keys kept in the database, private halves encrypted at rest (AES-GCM).

Rotation with overlap: a new key is published in the JWKS `identity_key_publish_seconds` before
it starts signing; the key it replaces stops signing then and stays published until the last
token it signed has expired. Every replica re-reads the keys periodically, and key choice depends
only on the clock, so replicas agree without talking to each other.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import ECKey
from kizuna.kit.db import Database, UTCDateTime
from sqlalchemy import Column, LargeBinary, String
from sqlmodel import JSON, Field, SQLModel, col, select

log = logging.getLogger("identity.keys")

ALG = "ES256"


class SigningKey(SQLModel, table=True):
    __tablename__ = "identity_signing_key"

    kid: str = Field(sa_column=Column(String(64), primary_key=True))
    alg: str = Field(sa_column=Column(String(16), nullable=False))
    public_jwk: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    private_jwk_encrypted: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # Signs from activates_at until retires_at; published until expires_at.
    activates_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    retires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


def load_key_encryption_key(configured: str, data_dir: Path) -> bytes:
    """The 32-byte key-encryption key: from the setting, or (local development) a file in the data dir."""
    if configured:
        key = base64.urlsafe_b64decode(configured + "=" * (-len(configured) % 4))
        if len(key) != 32:
            raise SystemExit("IDENTITY_KEY_ENCRYPTION_KEY must be 32 bytes, base64url-encoded")
        return key
    path = data_dir / "identity-key-encryption-key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return base64.urlsafe_b64decode(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    log.warning("IDENTITY_KEY_ENCRYPTION_KEY not set; generated one for local development", extra={"path": str(path)})
    return base64.urlsafe_b64decode(path.read_text().strip())


def derive_secret(kek: bytes, purpose: str) -> bytes:
    """A secret for one purpose (cookies, CSRF) derived from the key-encryption key."""
    return hashlib.sha256(kek + b"/" + purpose.encode()).digest()


@dataclass(frozen=True)
class LoadedKey:
    kid: str
    private: ECKey
    public_jwk: dict[str, Any]
    activates_at: datetime
    retires_at: datetime | None
    expires_at: datetime | None

    def signs_at(self, now: datetime) -> bool:
        return self.activates_at <= now and (self.retires_at is None or now < self.retires_at)

    def published_at(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


class KeyRing:
    """The keys of this issuer, as last read from the database."""

    def __init__(self, db: Database, kek: bytes, clock: Callable[[], datetime]) -> None:
        self.db = db
        self._aes = AESGCM(kek)
        self.clock = clock
        self.keys: list[LoadedKey] = []

    # ---- encryption at rest ---------------------------------------------------------------
    def _encrypt(self, kid: str, private_jwk: dict[str, Any]) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aes.encrypt(nonce, json.dumps(private_jwk).encode(), kid.encode())

    def _decrypt(self, kid: str, blob: bytes) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._aes.decrypt(blob[:12], blob[12:], kid.encode()))
        return data

    # ---- reading --------------------------------------------------------------------------
    async def reload(self) -> None:
        async with self.db.sessions() as session:
            rows = (await session.exec(select(SigningKey).order_by(col(SigningKey.activates_at)))).all()
        self.keys = [
            LoadedKey(
                kid=row.kid,
                private=ECKey.import_key(self._decrypt(row.kid, row.private_jwk_encrypted)),
                public_jwk=row.public_jwk,
                activates_at=row.activates_at,
                retires_at=row.retires_at,
                expires_at=row.expires_at,
            )
            for row in rows
        ]

    def signing_key(self) -> LoadedKey:
        """The key that signs now: the newest active one."""
        now = self.clock()
        active = [k for k in self.keys if k.signs_at(now)]
        if not active:
            raise RuntimeError("no signing key is active; run `python -m identity rotate-keys`")
        return active[-1]

    def public_key(self, kid: str) -> ECKey | None:
        now = self.clock()
        for key in self.keys:
            if key.kid == kid and key.published_at(now):
                return ECKey.import_key(key.public_jwk)
        return None

    def jwks(self) -> dict[str, Any]:
        now = self.clock()
        return {"keys": [k.public_jwk for k in self.keys if k.published_at(now)]}

    # ---- writing --------------------------------------------------------------------------
    async def ensure_signing_key(self) -> None:
        """On first start there is no key yet: create one that signs at once."""
        await self.reload()
        if not any(k.signs_at(self.clock()) for k in self.keys):
            await self.rotate(publish_seconds=0, retire_after_seconds=0)

    async def rotate(self, *, publish_seconds: int, retire_after_seconds: int) -> str:
        """Add a key that signs after `publish_seconds`; the current one retires then and leaves the
        JWKS `retire_after_seconds` later (the longest lifetime of a token it signed)."""
        now = self.clock()
        activates = now + timedelta(seconds=publish_seconds)
        private = ECKey.generate_key("P-256", auto_kid=False)
        kid = f"{now:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
        public = {**private.as_dict(private=False), "kid": kid, "alg": ALG, "use": "sig"}
        async with self.db.transaction() as session:
            current = (await session.exec(select(SigningKey).where(col(SigningKey.retires_at).is_(None)))).all()
            for row in current:
                row.retires_at = activates
                row.expires_at = activates + timedelta(seconds=retire_after_seconds)
                session.add(row)
            session.add(
                SigningKey(
                    kid=kid,
                    alg=ALG,
                    public_jwk=public,
                    private_jwk_encrypted=self._encrypt(kid, private.as_dict(private=True)),
                    created_at=now,
                    activates_at=activates,
                )
            )
        await self.reload()
        log.info("signing key added", extra={"kid": kid, "activates_at": activates.isoformat()})
        return kid
