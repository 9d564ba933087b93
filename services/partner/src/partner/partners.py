"""Partner companies and their stores: a company applies, an admin approves it under a contract
(earn rate, return window), and its tills authenticate with the partner's own credentials
(an id and a secret, rotatable; only a hash is kept). A till sends them as HTTP Basic, in the
`authorization` header (REST) or metadata (gRPC); `basic_credentials` reads both the same way."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import uuid
from datetime import datetime

from kizuna.kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from sqlmodel.ext.asyncio.session import AsyncSession

from partner.models import APPLIED, APPROVED, SUSPENDED, Partner, Store

MIN_RATE_BP, MAX_RATE_BP = 100, 1_000  # 1% (the ecosystem's base) to 10%
MAX_RETURN_WINDOW_DAYS = 90
# A partner id (ptn_ and 16 hex digits) and a secret (43 characters) need far less; a longer value
# is refused before it is decoded.
MAX_AUTHORIZATION_LENGTH = 512
MAX_PARTNER_ID_LENGTH = 64
TILL_CREDENTIALS = "a till authenticates with its partner id and secret (HTTP Basic, in the authorization header)"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def apply(session: AsyncSession, name: str, contact_email: str, now: datetime) -> Partner:
    partner = Partner(
        id=f"ptn_{uuid.uuid4().hex[:16]}", name=name, contact_email=contact_email, status=APPLIED, created_at=now
    )
    session.add(partner)
    return partner


async def get(session: AsyncSession, partner_id: str, *, for_update: bool = False) -> Partner:
    partner = await session.get(Partner, partner_id, with_for_update=for_update)
    if partner is None:
        raise NotFound("no such partner")
    return partner


async def approve(
    session: AsyncSession, partner_id: str, earn_rate_bp: int, return_window_days: int
) -> tuple[Partner, str]:
    """Approve under a contract; returns the partner and its till secret (shown once)."""
    if not MIN_RATE_BP <= earn_rate_bp <= MAX_RATE_BP:
        raise InvalidArgument(f"earn_rate_bp must be between {MIN_RATE_BP} and {MAX_RATE_BP}")
    if not 0 <= return_window_days <= MAX_RETURN_WINDOW_DAYS:
        raise InvalidArgument(f"return_window_days must be between 0 and {MAX_RETURN_WINDOW_DAYS}")
    partner = await get(session, partner_id, for_update=True)
    if partner.status == APPROVED:
        raise FailedPrecondition("the partner is approved already; rotate its secret to get a new one")
    secret = secrets.token_urlsafe(32)
    partner.status, partner.earn_rate_bp, partner.return_window_days = APPROVED, earn_rate_bp, return_window_days
    partner.secret_hash = _hash(secret)
    session.add(partner)
    return partner, secret


async def rotate_secret(session: AsyncSession, partner_id: str) -> str:
    partner = await get(session, partner_id, for_update=True)
    if partner.status != APPROVED:
        raise FailedPrecondition("only an approved partner has till credentials")
    secret = secrets.token_urlsafe(32)
    partner.secret_hash = _hash(secret)
    session.add(partner)
    return secret


async def suspend(session: AsyncSession, partner_id: str) -> Partner:
    partner = await get(session, partner_id, for_update=True)
    partner.status, partner.secret_hash = SUSPENDED, ""
    session.add(partner)
    return partner


class TillRefused(Unauthenticated):
    """A till's credentials are missing, malformed or wrong; over HTTP the answer challenges for
    Basic credentials (RFC 7617), as a 401 must say how to authenticate."""

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="Kizuna partner", charset="UTF-8"'}


def basic_credentials(authorization: str) -> tuple[str, str]:
    """The partner id and secret of an `authorization` value `Basic base64(id:secret)`.

    Every malformed value (another scheme, too long, not base64, not UTF-8, no colon, an empty or
    unprintable part) is UNAUTHENTICATED with the same message, whichever transport carried it."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not value or len(authorization) > MAX_AUTHORIZATION_LENGTH:
        raise TillRefused(TILL_CREDENTIALS)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: text beyond ASCII
        raise TillRefused(TILL_CREDENTIALS) from None
    partner_id, colon, secret = decoded.partition(":")
    if (
        not colon
        or not partner_id
        or not secret
        or len(partner_id) > MAX_PARTNER_ID_LENGTH
        or not decoded.isprintable()
    ):
        raise TillRefused(TILL_CREDENTIALS)
    return partner_id, secret


async def authenticate_basic(session: AsyncSession, authorization: str) -> Partner:
    """The approved partner whose credentials `authorization` carries (see `basic_credentials`)."""
    partner_id, secret = basic_credentials(authorization)
    return await authenticate(session, partner_id, secret)


async def authenticate(session: AsyncSession, partner_id: str, secret: str) -> Partner:
    partner = await session.get(Partner, partner_id)
    if (
        partner is None
        or partner.status != APPROVED
        or not partner.secret_hash
        or not hmac.compare_digest(partner.secret_hash, _hash(secret))
    ):
        raise TillRefused("unknown partner or wrong secret")
    return partner


async def add_store(session: AsyncSession, partner_id: str, name: str, now: datetime) -> Store:
    partner = await get(session, partner_id)
    if partner.status != APPROVED:
        raise FailedPrecondition("stores are added to approved partners")
    store = Store(id=f"sto_{uuid.uuid4().hex[:16]}", partner_id=partner.id, name=name, created_at=now)
    session.add(store)
    return store


async def store_of(session: AsyncSession, partner: Partner, store_id: str) -> Store:
    """One of the partner's own stores; another partner's store is as unknown as a missing one."""
    store = await session.get(Store, store_id)
    if store is None or store.partner_id != partner.id:
        raise NotFound("no such store for this partner")
    return store
