"""The member's privacy rights, as the account center offers them (kizuna.kit.privacy is the
protocol every other service speaks).

- *Download my data*: identity's own records plus every service's part, fetched with a
  `privacy:export` service token identity issues to itself, in one zip of JSON files (one per
  service). A service that does not answer is reported in the archive, never silently skipped.
- *Delete my account*: after the password is re-entered, one transaction marks the member
  erased, anonymizes identity's own records, ends every session, revokes every grant, records
  back-channel logouts and publishes `identity.member.erasure_requested`. Each service answers
  with `<service>.member.erased`; consumer `identity-erasure-progress` (one per service stream)
  records it, and an unguessable link shows the per-service progress.

Member ID and email after erasure: the member row stays with status `deleted` so the ID is never
issued again (IDs are ULIDs and the primary key keeps the retired one). The email is *freed*
(replaced by `<member id>@erased.invalid`): keeping even a hash of it would still be personal
data, and a person who registers again with it gets a new, unrelated member ID.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import secrets
import zipfile
from datetime import UTC, datetime
from typing import Any

import httpx
from kizuna.identity.v1 import events_pb2
from kizuna.kit import outbound
from kizuna.kit.clock import timestamp
from kizuna.kit.db import UTCDateTime, utcnow
from kizuna.kit.errors import FailedPrecondition, NotFound, PermissionDenied, Unauthenticated
from kizuna.kit.events import Consumer, Event, durable_name, publish
from kizuna.kit.natsauth import ERASURE_PROGRESS_PURPOSE
from kizuna.kit.privacy import ERASURE_REQUESTED, EXPORT_SCOPE, erased_subject
from sqlalchemy import Column, String, delete
from sqlmodel import JSON, Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from identity import members
from identity.clients import Consent
from identity.session_end import end_member_everywhere
from identity.sessions import OpSession, SignInAttempt
from identity.settings import Settings
from identity.tokens import Grant, publish_revocation

ERASED_NAME = "Deleted member"
# Not an argon2 hash: verification of any password against it fails.
ERASED_PASSWORD_HASH = "!erased"  # noqa: S105
PROGRESS_CONSUMER = durable_name("identity", ERASURE_PROGRESS_PURPOSE)


class Erasure(SQLModel, table=True):
    __tablename__ = "identity_erasure"

    member_id: str = Field(sa_column=Column(String(40), primary_key=True))
    link_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    services: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    requested_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class ErasureProgress(SQLModel, table=True):
    __tablename__ = "identity_erasure_progress"

    member_id: str = Field(sa_column=Column(String(40), primary_key=True))
    service: str = Field(sa_column=Column(String(100), primary_key=True))
    completed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


def links(settings: Settings) -> dict[str, str]:
    if not settings.kizuna_links.strip():
        return {}
    value: dict[str, str] = json.loads(settings.kizuna_links)
    return {name: url.rstrip("/") for name, url in value.items()}


def internal_links(settings: Settings) -> dict[str, str]:
    """Where identity calls each service: KIZUNA_INTERNAL_LINKS where set, else the public links
    (a pod cannot reach the ingress; the browser still gets the public ones)."""
    if not settings.kizuna_internal_links.strip():
        return links(settings)
    value: dict[str, str] = json.loads(settings.kizuna_internal_links)
    return {**links(settings), **{name: url.rstrip("/") for name, url in value.items()}}


def privacy_services(settings: Settings) -> list[str]:
    """The services that hold member data: the setting, or every linked service but identity."""
    raw = settings.kizuna_privacy_services.strip()
    configured: list[str] = json.loads(raw) if raw.startswith("[") else [s.strip() for s in raw.split(",") if s.strip()]
    return sorted(configured or [name for name in links(settings) if name != "identity"])


def _hash(link: str) -> str:
    return hashlib.sha256(link.encode()).hexdigest()


# ---- export -------------------------------------------------------------------------------------


async def identity_part(session: AsyncSession, member_id: str) -> dict[str, Any]:
    """What identity itself holds about the member (never secrets: no password hash, no tokens)."""
    member = await members.get(session, member_id)
    ops = (await session.exec(select(OpSession).where(OpSession.member_id == member_id))).all()
    grants = (await session.exec(select(Grant).where(Grant.member_id == member_id))).all()
    consents = (await session.exec(select(Consent).where(Consent.member_id == member_id))).all()
    return {
        "member": {
            "member_id": member.id,
            "email": member.email,
            "display_name": member.display_name,
            "status": member.status,
            "created_at": member.created_at.isoformat(),
            "updated_at": member.updated_at.isoformat(),
        },
        "sessions": [
            {
                "created_at": o.created_at.isoformat(),
                "ended_at": o.ended_at.isoformat() if o.ended_at else None,
                "user_agent": o.user_agent,
                "ip": o.ip,
            }
            for o in ops
        ],
        "authorizations": [
            {
                "client_id": g.client_id,
                "scope": g.scope,
                "created_at": g.created_at.isoformat(),
                "revoked_at": g.revoked_at.isoformat() if g.revoked_at else None,
            }
            for g in grants
        ],
        "consents": [
            {"client_id": c.client_id, "scopes": c.scopes, "granted_at": c.granted_at.isoformat()} for c in consents
        ],
    }


async def _fetch_part(
    http: httpx.AsyncClient, name: str, base: str | None, member_id: str, token: str
) -> dict[str, Any]:
    if base is None:
        return {"service": name, "status": "unavailable", "error": "no address configured for this service"}
    try:
        response = await http.get(
            f"{base}/privacy/members/{member_id}/export", headers={"Authorization": f"Bearer {token}"}
        )
    except httpx.HTTPError as exc:
        return {"service": name, "status": "unavailable", "error": f"did not answer ({type(exc).__name__})"}
    if response.status_code != 200:
        return {"service": name, "status": "unavailable", "error": f"answered HTTP {response.status_code}"}
    try:
        body = response.json()
    except ValueError:
        return {"service": name, "status": "unavailable", "error": "answered something that is not JSON"}
    return (
        {"status": "included", **body}
        if isinstance(body, dict)
        else {"service": name, "status": "unavailable", "error": "answered an unexpected document"}
    )


async def export_archive(provider: Any, member_id: str) -> bytes:
    """One zip: `identity.json`, one `<service>.json` per service, and `manifest.json`."""
    settings: Settings = provider.settings
    now = provider.now()
    async with provider.db.sessions() as session:
        mine = await identity_part(session, member_id)
    client_id = settings.kizuna_client_id or "identity"
    # A service token identity issues to itself (sub == client_id), short-lived and never stored.
    token, _jti, _exp = provider.issuer.access_token(
        subject=client_id, client_id=client_id, scope=EXPORT_SCOPE, lifetime=120, now=now
    )
    targets = internal_links(settings)
    services = privacy_services(settings)
    async with outbound.async_client(timeout=settings.identity_export_timeout_seconds) as http:
        parts = await asyncio.gather(
            *(_fetch_part(http, name, targets.get(name), member_id, token) for name in services)
        )
    manifest = {
        "member_id": member_id,
        "exported_at": now.isoformat(),
        "services": {"identity": {"status": "included"}}
        | {
            name: {"status": part["status"], **({"error": part["error"]} if "error" in part else {})}
            for name, part in zip(services, parts, strict=True)
        },
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
        archive.writestr(
            "identity.json",
            json.dumps(
                {"service": "identity", "member_id": member_id, "exported_at": now.isoformat(), "data": mine}, indent=2
            ),
        )
        for name, part in zip(services, parts, strict=True):
            archive.writestr(f"{name}.json", json.dumps(part, indent=2, default=str))
    return buffer.getvalue()


# ---- erasure ------------------------------------------------------------------------------------


async def erase_member(
    session: AsyncSession, provider: Any, member_id: str, *, password: str, now: datetime
) -> tuple[str, list[str]]:
    """Erase the member in the caller's transaction; returns (progress link, back-channel deliveries).
    A wrong password changes nothing."""
    # Locked: two deletions at once (two tabs) must not both proceed (PostgreSQL; SQLite serializes writers).
    member = await session.get(members.Member, member_id, with_for_update=True)
    if member is None:
        raise NotFound(f"no member {member_id}")
    if member.status != members.ACTIVE:
        raise FailedPrecondition("This account is already deleted.")
    if not provider.passwords.verify(member.password_hash, password):
        raise Unauthenticated("Your password is not correct.")
    old_email = member.email
    member.status = members.DELETED
    member.erased_at = now
    member.updated_at = now
    member.email = f"{member.id.lower()}@erased.invalid"
    member.display_name = ERASED_NAME
    member.password_hash = ERASED_PASSWORD_HASH
    session.add(member)
    deliveries = await end_member_everywhere(session, member.id, now)
    # Every token of the member, whatever it was issued under, is refused everywhere from now.
    await publish_revocation(session, now, reason="erasure", member_id=member.id, member_wide=True)
    for op in (await session.exec(select(OpSession).where(OpSession.member_id == member.id))).all():
        op.user_agent, op.ip = "", ""
        session.add(op)
    await session.exec(delete(Consent).where(col(Consent.member_id) == member.id))
    await session.exec(delete(SignInAttempt).where(col(SignInAttempt.account) == old_email))
    link = secrets.token_urlsafe(32)
    session.add(
        Erasure(
            member_id=member.id, link_hash=_hash(link), services=privacy_services(provider.settings), requested_at=now
        )
    )
    await publish(
        session,
        ERASURE_REQUESTED,
        events_pb2.MemberErasureRequested(member_id=member.id, requested_at=timestamp(now)),
        member_id=member.id,
    )
    return link, deliveries


async def progress(session: AsyncSession, link: str) -> tuple[Erasure, dict[str, datetime | None]] | None:
    """The erasure behind a progress link, and when each service confirmed (None: not yet)."""
    erasure = (await session.exec(select(Erasure).where(Erasure.link_hash == _hash(link)))).first()
    if erasure is None:
        return None
    rows = (await session.exec(select(ErasureProgress).where(ErasureProgress.member_id == erasure.member_id))).all()
    done = {r.service: r.completed_at for r in rows}
    status: dict[str, datetime | None] = {"identity": erasure.requested_at}
    status.update({name: done.get(name) for name in erasure.services})
    return erasure, status


async def record_completion(session: AsyncSession, event: Event) -> None:
    """`<service>.member.erased` → one progress row (the inbox makes redelivery harmless).

    The service is the subject's owner, which the broker enforces (a service publishes only under
    its own name); a completion that names another service in its body is refused.
    """
    completed = event.parse(events_pb2.ErasureCompleted)
    if not completed.member_id or not completed.service:
        raise ValueError("ErasureCompleted without member_id or service")
    if completed.service != event.owner:
        raise PermissionDenied(f"{event.owner} may not report erasure for {completed.service}")
    if await session.get(ErasureProgress, (completed.member_id, completed.service)) is None:
        session.add(
            ErasureProgress(
                member_id=completed.member_id,
                service=completed.service,
                completed_at=completed.completed_at.ToDatetime(tzinfo=UTC),
                recorded_at=utcnow(),
            )
        )


def progress_consumers(settings: Settings) -> list[Consumer]:
    """The kit's Consumer reads one stream: one `identity-erasure-progress` per service stream."""
    return [
        Consumer(name=PROGRESS_CONSUMER, subjects=[erased_subject(name)], handler=record_completion)
        for name in privacy_services(settings)
    ]


__all__ = ["Erasure", "ErasureProgress", "erase_member", "export_archive", "progress", "progress_consumers"]
