"""Back-channel logout deliveries (OIDC Back-Channel Logout 1.0), outbox-style.

Ending a session records one delivery per client in the same transaction; delivery is tried at
once and, when a client is down or refuses, retried with exponential backoff by a job that every
replica runs. A replica claims a delivery by bumping its attempt counter (optimistic: the update
only matches the attempt count it read), so two replicas never send the same attempt twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from kizuna.kit.db import UTCDateTime
from sqlalchemy import Column, Integer, String, update
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from ulid import ULID

from identity.clients import Client

if TYPE_CHECKING:
    from identity.provider import Provider

log = logging.getLogger("identity.backchannel")
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# How long a claimed attempt may take before another replica may try again.
CLAIM_SECONDS = 30


class BackchannelDelivery(SQLModel, table=True):
    __tablename__ = "identity_backchannel_delivery"

    id: str = Field(sa_column=Column(String(40), primary_key=True))
    client_id: str = Field(sa_column=Column(String(100), nullable=False))
    member_id: str = Field(sa_column=Column(String(40), nullable=False))
    # None: every session of the member at that client (account erasure).
    sid: str | None = Field(default=None, sa_column=Column(String(64)))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    abandoned_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    last_error: str | None = Field(default=None, sa_column=Column(String(200)))


def stage(session: AsyncSession, *, client_id: str, member_id: str, sid: str | None, now: datetime) -> str:
    """Record a delivery in the caller's transaction; returns its id (deliver it after commit)."""
    delivery = BackchannelDelivery(
        id=f"bcl_{ULID()}", client_id=client_id, member_id=member_id, sid=sid, created_at=now, next_attempt_at=now
    )
    session.add(delivery)
    return delivery.id


def backoff(attempts: int, base_seconds: float) -> timedelta:
    """Seconds before the next attempt after `attempts` failures: base * 2^(n-1), at most an hour."""
    return timedelta(seconds=min(base_seconds * 2 ** max(attempts - 1, 0), 3600.0))


async def deliver_due(provider: Provider, ids: list[str] | None = None) -> int:
    """Try the due deliveries (or just `ids`); returns how many succeeded."""
    now = provider.now()
    async with provider.db.sessions() as session:
        query = select(BackchannelDelivery).where(
            col(BackchannelDelivery.delivered_at).is_(None),
            col(BackchannelDelivery.abandoned_at).is_(None),
            col(BackchannelDelivery.next_attempt_at) <= now,
        )
        if ids is not None:
            if not ids:
                return 0
            query = query.where(col(BackchannelDelivery.id).in_(ids))
        due = list((await session.exec(query.order_by(col(BackchannelDelivery.next_attempt_at)).limit(100))).all())
    claimed: list[BackchannelDelivery] = []
    for row in due:
        async with provider.db.transaction() as session:
            result = await session.exec(
                update(BackchannelDelivery)
                .where(col(BackchannelDelivery.id) == row.id, col(BackchannelDelivery.attempts) == row.attempts)
                .values(attempts=row.attempts + 1, next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
            )
        if result.rowcount == 1:
            row.attempts += 1
            claimed.append(row)
    outcomes = await asyncio.gather(*(_attempt(provider, row) for row in claimed))
    return sum(1 for ok in outcomes if ok)


async def _attempt(provider: Provider, row: BackchannelDelivery) -> bool:
    settings = provider.settings
    client = await provider.client(row.client_id)
    error: str | None
    if client is None or not client.backchannel_logout_uri:
        error = "client has no back-channel logout URI"
    else:
        error = await _post(provider, client, row)
    now = provider.now()
    values: dict[str, object]
    if error is None:
        values = {"delivered_at": now, "last_error": None}
    elif row.attempts >= settings.identity_backchannel_max_attempts or client is None:
        log.warning("back-channel logout abandoned", extra={"client_id": row.client_id, "error": error})
        values = {"abandoned_at": now, "last_error": error[:200]}
    else:
        log.info("back-channel logout will be retried", extra={"client_id": row.client_id, "error": error})
        values = {
            "next_attempt_at": now + backoff(row.attempts, settings.identity_backchannel_retry_base_seconds),
            "last_error": error[:200],
        }
    async with provider.db.transaction() as session:
        await session.exec(update(BackchannelDelivery).where(col(BackchannelDelivery.id) == row.id).values(**values))
    return error is None


async def _post(provider: Provider, client: Client, row: BackchannelDelivery) -> str | None:
    now = int(provider.now().timestamp())
    claims: dict[str, object] = {
        "iss": provider.issuer_url,
        "aud": client.id,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(16),
        "sub": row.member_id,
        "events": {BACKCHANNEL_EVENT: {}},
    }
    if row.sid:
        claims["sid"] = row.sid
    token = provider.issuer.sign(claims, typ="logout+jwt")
    assert client.backchannel_logout_uri is not None
    try:
        response = await provider.http.post(client.backchannel_logout_uri, data={"logout_token": token})
    except Exception as exc:  # recorded and retried: one unreachable client must not stop the others
        return f"{type(exc).__name__}"
    if response.status_code >= 300:
        return f"HTTP {response.status_code}"
    return None


async def retry_deliveries(runtime: object) -> None:
    """Job: deliver what is due, forever (every replica; claims keep attempts single)."""
    from kizuna.kit.service import Runtime

    from identity.context import identity_of

    assert isinstance(runtime, Runtime)
    while True:
        await asyncio.sleep(runtime.settings.identity_backchannel_poll_seconds)
        provider = identity_of(runtime).provider
        try:
            await deliver_due(provider)
        except Exception:
            log.exception("back-channel delivery round failed; retrying next round")
