"""Deleting what has expired: codes, access and refresh tokens, sessions, sign-in attempts and
delivered back-channel notices, once they are older than the kept history.

Every replica may run it at the same time: each statement deletes rows by an expiry condition,
so a second replica deleting the same rows just deletes none; batches keep transactions short.
Grants are kept (they are the record of what a member authorized, shown in the data export).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from kizuna.kit.db import Database
from sqlalchemy import and_, delete, or_
from sqlmodel import col, select

from identity.backchannel import BackchannelDelivery
from identity.sessions import OpSession, SignInAttempt
from identity.tokens import AccessToken, AuthorizationCode, RefreshToken

log = logging.getLogger("identity.cleanup")
BATCH = 500


async def _delete_batches(db: Database, model: Any, key: Any, condition: Any) -> int:
    total = 0
    while True:
        async with db.transaction() as session:
            keys = list((await session.exec(select(key).where(condition).limit(BATCH))).all())
            if not keys:
                return total
            result = await session.exec(delete(model).where(col(key).in_(keys)))
            total += int(result.rowcount or 0)
        if len(keys) < BATCH:
            return total


async def clean_expired(
    db: Database, now: datetime, *, keep_seconds: int, signin_window_seconds: int, usual_address_days: int = 30
) -> dict[str, int]:
    """Delete expired rows; returns how many per kind."""
    keep = now - timedelta(seconds=keep_seconds)
    failures_before = now - timedelta(seconds=max(signin_window_seconds, 3600))
    # A successful sign-in makes its address a usual one for this long (identity.throttle).
    successes_before = now - timedelta(days=usual_address_days)
    return {
        # A used code must outlive its expiry a little so that a replay is still recognised
        # (and revokes the grant); after the expiry a replay fails anyway.
        "codes": await _delete_batches(
            db,
            AuthorizationCode,
            AuthorizationCode.code_hash,
            col(AuthorizationCode.expires_at) < now - timedelta(hours=1),
        ),
        "access_tokens": await _delete_batches(db, AccessToken, AccessToken.jti, col(AccessToken.expires_at) < now),
        # Rotated refresh tokens stay until they expire: a reuse must still be recognised as one.
        "refresh_tokens": await _delete_batches(
            db, RefreshToken, RefreshToken.token_hash, col(RefreshToken.expires_at) < now
        ),
        "sessions": await _delete_batches(
            db, OpSession, OpSession.id, or_(col(OpSession.expires_at) < keep, col(OpSession.ended_at) < keep)
        ),
        "signin_attempts": await _delete_batches(
            db,
            SignInAttempt,
            SignInAttempt.id,
            or_(
                and_(col(SignInAttempt.succeeded) == False, col(SignInAttempt.at) < failures_before),  # noqa: E712
                and_(col(SignInAttempt.succeeded) == True, col(SignInAttempt.at) < successes_before),  # noqa: E712
            ),
        ),
        "backchannel_deliveries": await _delete_batches(
            db,
            BackchannelDelivery,
            BackchannelDelivery.id,
            or_(col(BackchannelDelivery.delivered_at) < keep, col(BackchannelDelivery.abandoned_at) < keep),
        ),
    }


async def cleanup_job(runtime: Any) -> None:
    """Job: clean up every `identity_cleanup_seconds`."""
    from identity.context import identity_of

    settings = runtime.settings
    while True:
        await asyncio.sleep(settings.identity_cleanup_seconds)
        provider = identity_of(runtime).provider
        try:
            counts = await clean_expired(
                runtime.db,
                provider.now(),
                keep_seconds=settings.identity_cleanup_keep_seconds,
                signin_window_seconds=settings.identity_signin_window_seconds,
                usual_address_days=settings.identity_signin_usual_address_days,
            )
        except Exception:
            log.exception("cleanup round failed; trying again next round")
            continue
        if any(counts.values()):
            log.info("expired rows deleted", extra=counts)
