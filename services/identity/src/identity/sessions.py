"""Browser sessions at identity (the single sign-on session) and sign-in throttling.

The cookie holds only a signed session id; the session lives in the database so that any
replica can serve any request and a session can be ended from the account center.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from itsdangerous import BadSignature, URLSafeSerializer
from kizuna.kit.db import UTCDateTime
from opentelemetry import metrics
from sqlalchemy import Boolean, Column, Integer, String, update
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

COOKIE = "kz_idp_session"


class OpSession(SQLModel, table=True):
    __tablename__ = "identity_session"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    member_id: str = Field(sa_column=Column(String(40), nullable=False, index=True))
    auth_time: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    ended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    user_agent: str = Field(default="", sa_column=Column(String(300), nullable=False))
    ip: str = Field(default="", sa_column=Column(String(64), nullable=False))

    def live(self, now: datetime) -> bool:
        return self.ended_at is None and now < self.expires_at


class SignInAttempt(SQLModel, table=True):
    __tablename__ = "identity_signin_attempt"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    account: str = Field(sa_column=Column(String(320), nullable=False, index=True))
    ip: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    succeeded: bool = Field(sa_column=Column(Boolean, nullable=False))
    # The known device (device cookie) the attempt came from, and how the throttle classed its
    # source: "device", "usual" (an address this account signed in from) or "unknown".
    device: str | None = Field(default=None, sa_column=Column(String(64), index=True))
    source: str = Field(default="unknown", sa_column=Column(String(10), nullable=False, server_default="unknown"))


class SessionCookie:
    """Signs and reads the session id cookie: signed with the current key-encryption key version's
    secret, read with any version's (`secrets`, current first)."""

    def __init__(self, secrets: list[bytes]) -> None:
        self._current = URLSafeSerializer(secrets[0], salt="identity-session")
        # itsdangerous signs with the last key and accepts every one.
        self._any = URLSafeSerializer(list(reversed(secrets)), salt="identity-session")

    def dumps(self, session_id: str) -> str:
        return self._current.dumps(session_id)

    def loads(self, value: str | None) -> str | None:
        return self.read(value)[0]

    def read(self, value: str | None) -> tuple[str | None, bool]:
        """(session id or None, whether the cookie is signed with an older version and should be
        signed again with the current one)."""
        if not value:
            return None, False
        for serializer, stale in ((self._current, False), (self._any, True)):
            try:
                sid = serializer.loads(value)
            except BadSignature:
                continue
            return (sid, stale) if isinstance(sid, str) else (None, False)
        return None, False


async def start(
    session: AsyncSession, *, member_id: str, now: datetime, lifetime_seconds: int, user_agent: str, ip: str
) -> OpSession:
    op = OpSession(
        id=secrets.token_urlsafe(24),
        member_id=member_id,
        auth_time=now,
        created_at=now,
        expires_at=now + timedelta(seconds=lifetime_seconds),
        user_agent=user_agent[:300],
        ip=ip[:64],
    )
    session.add(op)
    return op


async def sessions_of(session: AsyncSession, member_id: str, now: datetime) -> list[OpSession]:
    rows = (
        await session.exec(
            select(OpSession)
            .where(OpSession.member_id == member_id, col(OpSession.ended_at).is_(None), OpSession.expires_at > now)
            .order_by(col(OpSession.created_at).desc())
        )
    ).all()
    return list(rows)


# ---- throttling (the rules are in identity.throttle) ----------------------------------------


async def attempt_succeeded(session: AsyncSession, attempt_id: int) -> None:
    """The password was right (or never shown wrong): the attempt no longer counts as a failure."""
    await session.exec(update(SignInAttempt).where(col(SignInAttempt.id) == attempt_id).values(succeeded=True))


class SignInCounter:
    """The OpenTelemetry counter `kizuna.identity.sign_ins` with attribute `outcome` (`success`,
    `failure`, `throttled`) for password sign-ins; the dashboard reads it as
    kizuna_identity_sign_ins_total by outcome. Tests give it their own meter provider."""

    SUCCESS = "success"
    FAILURE = "failure"
    THROTTLED = "throttled"

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("identity")
        self._counter = meter.create_counter(
            "kizuna.identity.sign_ins", unit="{sign_in}", description="Password sign-ins at identity, by outcome"
        )

    def record(self, outcome: str) -> None:
        self._counter.add(1, {"outcome": outcome})
