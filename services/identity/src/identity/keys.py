"""Signing keys: ES256 keys kept in the database, private halves encrypted at rest (AES-GCM).

Rotation with overlap: a new key is published in the JWKS `identity_key_publish_seconds` before
it starts signing; the key it replaces stops signing then and stays published until the last
token it signed has expired. Every replica re-reads the keys periodically, and key choice depends
only on the clock, so replicas agree without talking to each other.

The key-encryption key is a versioned set (`IDENTITY_KEY_ENCRYPTION_KEYS="v2:<key>,v1:<key>"`,
the first is current): signing keys are encrypted under the current version and record which one;
the secrets derived from it (session cookie, CSRF, email links, device cookie) are made with the
current version and checked against every version. `python -m identity reencrypt-keys` moves the
stored signing keys to the current version, after which an old version can be removed. The
procedure is in the service README ("Key-encryption keys").
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import ECKey, KeySetSerialization
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
    # The key-encryption key version it is encrypted under; None: written before versions existed.
    kek_version: str | None = Field(default=None, sa_column=Column(String(32)))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # Signs from activates_at until retires_at; published until expires_at.
    activates_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    retires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


KEYS_VARIABLE = "IDENTITY_KEY_ENCRYPTION_KEYS"
LEGACY_VARIABLE = "IDENTITY_KEY_ENCRYPTION_KEY"
# The version a single unversioned key (the legacy variable, the local development file) has.
FIRST_VERSION = "v1"
LOCAL_KEY_FILE = "identity-key-encryption-key"
_VERSION_NAME = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class KeyEncryptionKeyError(SystemExit):
    """The key-encryption keys are missing or malformed: identity does not start."""


class KeyEncryptionKeys:
    """The versions of the key-encryption key, current first. Each is 32 bytes (AES-256-GCM)."""

    def __init__(self, versions: list[tuple[str, bytes]]) -> None:
        if not versions:
            raise KeyEncryptionKeyError(f"{KEYS_VARIABLE} holds no key")
        self.versions = versions
        self._by_version = dict(versions)

    @property
    def current_version(self) -> str:
        return self.versions[0][0]

    @property
    def current(self) -> bytes:
        return self.versions[0][1]

    def key(self, version: str) -> bytes | None:
        return self._by_version.get(version)

    def secrets(self, purpose: str) -> list[bytes]:
        """The secret for `purpose` under every version, current first: make with the first,
        accept any (what was made before the current version was added stays valid)."""
        return [derive_secret(key, purpose) for _, key in self.versions]


def _decode_key(encoded: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KeyEncryptionKeyError(f"{where} must be 32 bytes, base64url-encoded")
    return key


def parse_key_set(raw: str) -> KeyEncryptionKeys:
    """`v2:<base64url>,v1:<base64url>`: versions newest (current) first, names unique."""
    versions: list[tuple[str, bytes]] = []
    for item in raw.split(","):
        version, sep, encoded = item.strip().partition(":")
        if not sep or not _VERSION_NAME.match(version):
            raise KeyEncryptionKeyError(
                f"{KEYS_VARIABLE} must be a comma-separated list of <version>:<32 bytes base64url>, "
                "current first (a version name has 1-32 letters, digits, '.', '_' or '-')"
            )
        if any(version == known for known, _ in versions):
            raise KeyEncryptionKeyError(f"{KEYS_VARIABLE} names version {version} twice")
        versions.append((version, _decode_key(encoded.strip(), f"{KEYS_VARIABLE} version {version}")))
    return KeyEncryptionKeys(versions)


def local_development(issuer: str) -> bool:
    """An issuer at a loopback http address (`make up`, tests) runs only on this machine: the
    one place a key-encryption key may be generated rather than configured."""
    parts = urlsplit(issuer)
    return parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK_HOSTS


def load_key_encryption_keys(keys: str, legacy_key: str, issuer: str, data_dir: Path) -> KeyEncryptionKeys:
    """The key-encryption keys: `IDENTITY_KEY_ENCRYPTION_KEYS`; else the single unversioned
    `IDENTITY_KEY_ENCRYPTION_KEY` as version v1; else, in local development only, a key generated
    once into the data dir. Anywhere else identity refuses to start without a key: a key made up
    per process would leave every other replica unable to read the signing keys, and sign members
    out at every restart."""
    if keys.strip():
        if legacy_key:
            raise KeyEncryptionKeyError(f"set {KEYS_VARIABLE} only: {LEGACY_VARIABLE} is its single-key form")
        return parse_key_set(keys)
    if legacy_key:
        return KeyEncryptionKeys([(FIRST_VERSION, _decode_key(legacy_key, LEGACY_VARIABLE))])
    if not local_development(issuer):
        raise KeyEncryptionKeyError(
            f"missing required setting {KEYS_VARIABLE} (set the {KEYS_VARIABLE} environment variable, e.g. "
            f"{FIRST_VERSION}:<32 random bytes, base64url>); one is generated only in local development, "
            "with KIZUNA_ISSUER at a loopback http address"
        )
    return KeyEncryptionKeys([(FIRST_VERSION, _local_key(data_dir))])


def _local_key(data_dir: Path) -> bytes:
    path = data_dir / LOCAL_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode_key(path.read_text().strip(), str(path))
    with os.fdopen(fd, "w") as f:
        f.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    log.warning(f"{KEYS_VARIABLE} not set; generated one for local development", extra={"path": str(path)})
    return _decode_key(path.read_text().strip(), str(path))


def _loaded(row: SigningKey, private_jwk: dict[str, Any]) -> LoadedKey:
    private = ECKey.import_key(private_jwk)
    signer = private.private_key
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise KeyEncryptionKeyError(f"signing key {row.kid} has no private EC key")
    return LoadedKey(
        kid=row.kid,
        private=private,
        public_jwk=row.public_jwk,
        activates_at=row.activates_at,
        retires_at=row.retires_at,
        expires_at=row.expires_at,
        signer=signer,
    )


def derive_secret(kek: bytes, purpose: str) -> bytes:
    """A secret for one purpose (cookies, CSRF) derived from one key-encryption key version."""
    return hashlib.sha256(kek + b"/" + purpose.encode()).digest()


@dataclass(frozen=True)
class LoadedKey:
    kid: str
    private: ECKey
    public_jwk: dict[str, Any]
    activates_at: datetime
    retires_at: datetime | None
    expires_at: datetime | None
    # What signs: `cryptography`'s key object, taken out of the JWK once at load, not per token.
    signer: ec.EllipticCurvePrivateKey

    def signs_at(self, now: datetime) -> bool:
        return self.activates_at <= now and (self.retires_at is None or now < self.retires_at)

    def published_at(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


class KeyRing:
    """The keys of this issuer, as last read from the database."""

    def __init__(self, db: Database, kek: KeyEncryptionKeys, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.kek = kek
        self._aes = {version: AESGCM(key) for version, key in kek.versions}
        self.clock = clock
        self.keys: list[LoadedKey] = []
        # The key that signs, for the span of time in which no key starts or stops signing:
        # (key, from, until); the token endpoint asks for it on every token.
        self._signing: tuple[LoadedKey, datetime | None, datetime | None] | None = None

    # ---- encryption at rest ---------------------------------------------------------------
    def _encrypt(self, kid: str, private_jwk: dict[str, Any]) -> tuple[str, bytes]:
        """Under the current version; returns (version, nonce + ciphertext)."""
        version = self.kek.current_version
        nonce = secrets.token_bytes(12)
        return version, nonce + self._aes[version].encrypt(nonce, json.dumps(private_jwk).encode(), kid.encode())

    def _decrypt(self, row: SigningKey) -> dict[str, Any]:
        """Under the version the row names; a row from before versions (or naming a version not
        configured) is tried under each, as AES-GCM tells a wrong key from the right one."""
        named = self._aes.get(row.kek_version or "")
        candidates = [named] if named is not None else list(self._aes.values())
        for aes in candidates:
            try:
                data: dict[str, Any] = json.loads(
                    aes.decrypt(row.private_jwk_encrypted[:12], row.private_jwk_encrypted[12:], row.kid.encode())
                )
            except InvalidTag:
                continue
            return data
        version = row.kek_version or "(unversioned)"
        configured = ", ".join(v for v, _ in self.kek.versions)
        raise KeyEncryptionKeyError(
            f"signing key {row.kid} is encrypted under key-encryption key version {version}, "
            f"which {KEYS_VARIABLE} does not hold (configured: {configured})"
        )

    # ---- reading --------------------------------------------------------------------------
    async def reload(self) -> None:
        async with self.db.sessions() as session:
            rows = (await session.exec(select(SigningKey).order_by(col(SigningKey.activates_at)))).all()
        self.keys = [_loaded(row, self._decrypt(row)) for row in rows]
        self._signing = None

    def signing_key(self) -> LoadedKey:
        """The key that signs now: the newest active one (chosen again only when the clock
        crosses a moment at which some key starts or stops signing, or after a reload)."""
        now = self.clock()
        cached = self._signing
        if cached is not None and (cached[1] is None or cached[1] <= now) and (cached[2] is None or now < cached[2]):
            return cached[0]
        active = [k for k in self.keys if k.signs_at(now)]
        if not active:
            raise RuntimeError("no signing key is active; run `python -m identity rotate-keys`")
        moments = [m for k in self.keys for m in (k.activates_at, k.retires_at) if m is not None]
        since = max((m for m in moments if m <= now), default=None)
        until = min((m for m in moments if m > now), default=None)
        self._signing = (active[-1], since, until)
        return active[-1]

    def public_key(self, kid: str) -> ECKey | None:
        now = self.clock()
        for key in self.keys:
            if key.kid == kid and key.published_at(now):
                return ECKey.import_key(key.public_jwk)
        return None

    def jwks(self) -> KeySetSerialization:
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
        version, encrypted = self._encrypt(kid, private.as_dict(private=True))
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
                    private_jwk_encrypted=encrypted,
                    kek_version=version,
                    created_at=now,
                    activates_at=activates,
                )
            )
        await self.reload()
        log.info("signing key added", extra={"kid": kid, "activates_at": activates.isoformat()})
        return kid

    async def reencrypt(self) -> dict[str, int]:
        """Re-encrypt every stored signing key that is not under the current key-encryption key
        version, in one transaction (all or none). Returns how many were re-encrypted and how many
        already were under the current version."""
        current = self.kek.current_version
        moved = kept = 0
        async with self.db.transaction() as session:
            for row in (await session.exec(select(SigningKey))).all():
                if row.kek_version == current:
                    kept += 1
                    continue
                row.kek_version, row.private_jwk_encrypted = self._encrypt(row.kid, self._decrypt(row))
                session.add(row)
                moved += 1
        await self.reload()
        log.info("signing keys re-encrypted", extra={"version": current, "reencrypted": moved, "already": kept})
        return {"reencrypted": moved, "already_current": kept}
