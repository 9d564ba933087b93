"""Sign-in throttling that stops guessing but not the owner.

A password check is throttled by *where it comes from*, per account:
- the owner's **known device**: a browser holding a signed device cookie that identity set after a
  successful sign-in to this account. Its failures count only against itself;
- a **usual address**: one this account signed in from successfully within the last
  `usual_address_days`. Failures from it count only against that (account, address);
- **anywhere else**: failures count against the account as a whole (every unknown source
  together), so an attacker spreading guesses over many addresses is slowed like one;
- and every address, across all accounts (credential stuffing), except a known device.

Each count allows `free` failures, then each further attempt must wait a delay that doubles from
`base_delay` up to `max_delay` after the last failure: progressive, never a fixed lockout. A
success from a known device or a usual address ends that source's streak; the unknown-source count
only decays with the window, so a success elsewhere cannot wipe an attacker's record.

The rules that decide are pure functions (`wait_after`, `Source`); `open_attempt` reads the
history and records the attempt in one short transaction, so parallel guesses cannot slip past.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from kizuna.kit.db import Database
from sqlalchemy import func
from sqlmodel import col, select

from identity.sessions import SignInAttempt

DEVICE_COOKIE = "kz_device"
DEVICE = "device"
USUAL = "usual"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Policy:
    window_seconds: int = 24 * 3600
    free_per_source: int = 5  # per known device, per usual address, per account from elsewhere
    free_per_address: int = 30  # per address across accounts
    base_delay_seconds: float = 30.0
    max_delay_seconds: float = 900.0
    usual_address_days: int = 30
    device_days: int = 180

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(
            window_seconds=settings.identity_signin_window_seconds,
            free_per_source=settings.identity_signin_max_failures_account,
            free_per_address=settings.identity_signin_max_failures_ip,
            base_delay_seconds=settings.identity_signin_base_delay_seconds,
            max_delay_seconds=settings.identity_signin_max_delay_seconds,
            usual_address_days=settings.identity_signin_usual_address_days,
            device_days=settings.identity_signin_device_days,
        )


def wait_after(failures: list[datetime], now: datetime, *, free: int, policy: Policy) -> float:
    """Seconds to wait before the next attempt, given the failures (oldest first) that count."""
    over = len(failures) - free
    if over < 0:
        return 0.0
    delay = min(policy.base_delay_seconds * 2**over, policy.max_delay_seconds)
    ready = failures[-1] + timedelta(seconds=delay)
    return max(0.0, (ready - now).total_seconds())


def streak(rows: list[tuple[datetime, bool]]) -> list[datetime]:
    """The failures after the last success (rows oldest first)."""
    failures: list[datetime] = []
    for at, succeeded in rows:
        if succeeded:
            failures.clear()
        else:
            failures.append(at)
    return failures


# ---- the device cookie -------------------------------------------------------------------------


def account_tag(account: str) -> str:
    """The account as the device cookie names it (a cookie is readable: no email in clear)."""
    return hashlib.sha256(account.encode()).hexdigest()[:20]


class DeviceCookie:
    """A signed, long-lived cookie naming this browser (a random id) and the accounts that
    signed in from it (at most 5, newest last)."""

    MAX_ACCOUNTS = 5

    def __init__(self, secrets: list[bytes], max_age_days: int) -> None:
        # `secrets` current first; itsdangerous signs with the last and accepts every one (a
        # cookie signed under an older key version is signed again at the next sign-in).
        self._serializer = URLSafeTimedSerializer(list(reversed(secrets)), salt="identity-device")
        self.max_age = max_age_days * 24 * 3600

    def read(self, value: str | None) -> tuple[str, list[str]] | None:
        if not value or len(value) > 2000:
            return None
        try:
            data = self._serializer.loads(value, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("d"), str) or not isinstance(data.get("a"), list):
            return None
        return data["d"], [a for a in data["a"] if isinstance(a, str)]

    def device_for(self, value: str | None, account: str) -> str | None:
        """The device id when this cookie is a known device of `account`, else None."""
        read = self.read(value)
        if read is None or account_tag(account) not in read[1]:
            return None
        return read[0]

    def after_success(self, value: str | None, account: str) -> str:
        """The cookie to set after `account` signed in from this browser."""
        read = self.read(value)
        device, accounts = read if read is not None else (secrets.token_urlsafe(16), [])
        tag = account_tag(account)
        kept = [a for a in accounts if a != tag][-(self.MAX_ACCOUNTS - 1) :]
        accounts = [*kept, tag]
        return self._serializer.dumps({"d": device, "a": accounts})


# ---- recording and deciding ------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    attempt_id: int | None  # None: refused
    wait_seconds: float
    source: str


async def open_attempt(
    db: Database, *, account: str, ip: str, device: str | None, now: datetime, policy: Policy
) -> Decision:
    """Start a password check: refused (with the seconds to wait) when its source has failed too
    often, else recorded as a failure until `sessions.attempt_succeeded` says otherwise."""
    account, ip = account[:320], ip[:64]
    since = now - timedelta(seconds=policy.window_seconds)
    async with db.transaction() as session:
        if db.engine.dialect.name == "postgresql":
            for key in (f"account:{account}", f"ip:{ip}"):  # always in this order: no deadlock
                await session.exec(select(func.pg_advisory_xact_lock(func.hashtext(key))))

        async def history(*where: Any, limit: int = 200) -> list[tuple[datetime, bool]]:
            rows = await session.exec(
                select(SignInAttempt.at, SignInAttempt.succeeded)
                .where(col(SignInAttempt.at) > since, *where)
                .order_by(col(SignInAttempt.at).desc(), col(SignInAttempt.id).desc())
                .limit(limit)
            )
            return [(at, ok) for at, ok in reversed(rows.all())]

        if device is not None:
            source = DEVICE
            failures = streak(await history(SignInAttempt.account == account, SignInAttempt.device == device))
        else:
            usual_since = now - timedelta(days=policy.usual_address_days)
            usual = (
                await session.exec(
                    select(SignInAttempt.id)
                    .where(
                        SignInAttempt.account == account,
                        SignInAttempt.ip == ip,
                        SignInAttempt.succeeded == True,  # noqa: E712
                        col(SignInAttempt.at) > usual_since,
                    )
                    .limit(1)
                )
            ).first() is not None
            if usual:
                source = USUAL
                failures = streak(
                    await history(
                        SignInAttempt.account == account, SignInAttempt.ip == ip, SignInAttempt.source == USUAL
                    )
                )
            else:
                source = UNKNOWN
                rows = await history(SignInAttempt.account == account, SignInAttempt.source == UNKNOWN)
                failures = [at for at, ok in rows if not ok]
        wait = wait_after(failures, now, free=policy.free_per_source, policy=policy)
        if source != DEVICE:
            by_address = [at for at, ok in await history(SignInAttempt.ip == ip, limit=1000) if not ok]
            wait = max(wait, wait_after(by_address, now, free=policy.free_per_address, policy=policy))
        if wait > 0:
            return Decision(None, wait, source)
        attempt = SignInAttempt(account=account, ip=ip, at=now, succeeded=False, device=device, source=source)
        session.add(attempt)
        await session.flush()
        assert attempt.id is not None
        return Decision(attempt.id, 0.0, source)


def wait_message(seconds: float) -> str:
    if seconds < 90:
        return f"Too many failed attempts. Try again in {max(1, round(seconds))} seconds."
    return f"Too many failed attempts. Try again in {round(seconds / 60)} minutes."
