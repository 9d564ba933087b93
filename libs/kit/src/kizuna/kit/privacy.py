"""The member's privacy rights across the ecosystem, as one protocol every service speaks.

- Export: identity's account center asks every service for what it holds about a member:
  `GET /privacy/members/{member_id}/export` with identity's service token (scope
  `privacy:export`); each service answers JSON, and identity assembles one archive.
- Erasure: identity publishes `identity.member.erasure_requested`; every service erases or
  anonymises what it holds in the same transaction as its inbox row, then publishes
  `<service>.member.erased` (`ErasureCompleted`), which identity shows as per-service progress.

A service declares only its two domain functions: `Service(privacy=Privacy(export, erase))`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from kizuna.identity.v1 import events_pb2 as identity_events
from kizuna.kit.auth import Principal, service_scope
from kizuna.kit.clock import timestamp
from kizuna.kit.db import utcnow
from kizuna.kit.declaration import ISSUER
from kizuna.kit.errors import PermissionDenied
from kizuna.kit.events import Consumer, Event, durable_name, publish
from kizuna.kit.natsauth import ERASURE_PURPOSE
from sqlmodel.ext.asyncio.session import AsyncSession

EXPORT_SCOPE = "privacy:export"
ERASURE_REQUESTED = f"{ISSUER}.member.erasure_requested"

ExportFn = Callable[[AsyncSession, str], Awaitable[dict[str, Any]]]
EraseFn = Callable[[AsyncSession, str], Awaitable[None]]


@dataclass(frozen=True)
class Privacy:
    """What a service holds about a member (`export`) and how it forgets them (`erase`)."""

    export: ExportFn
    erase: EraseFn


def erased_subject(service: str) -> str:
    return f"{service}.member.erased"


def erasure_consumer(service: str, privacy: Privacy) -> Consumer:
    """`<service>-member-erasure`: erase, then report completion, in one transaction."""

    async def handle(session: AsyncSession, event: Event) -> None:
        # Only identity can publish under `identity.>` (the broker enforces it): the subject, never
        # a header, says the request is identity's.
        if event.owner != ISSUER or event.subject != ERASURE_REQUESTED:
            raise PermissionDenied(f"an erasure request must come from {ISSUER} on {ERASURE_REQUESTED}")
        request = event.parse(identity_events.MemberErasureRequested)
        await privacy.erase(session, request.member_id)
        await publish(
            session,
            erased_subject(service),
            identity_events.ErasureCompleted(
                member_id=request.member_id, service=service, completed_at=timestamp(utcnow())
            ),
            member_id=request.member_id,
        )

    return Consumer(name=durable_name(service, ERASURE_PURPOSE), subjects=[ERASURE_REQUESTED], handler=handle)


def export_router(service: str, privacy: Privacy) -> APIRouter:
    """`GET /privacy/members/{member_id}/export`, for identity's service token only."""
    router = APIRouter(prefix="/privacy", tags=["privacy"])

    @router.get("/members/{member_id}/export")
    async def export(
        member_id: str, principal: Annotated[Principal, Depends(service_scope(EXPORT_SCOPE))], request: Request
    ) -> dict[str, Any]:
        async with request.app.state.runtime.db.sessions() as session:
            data = await privacy.export(session, member_id)
        return {"service": service, "member_id": member_id, "exported_at": utcnow().isoformat(), "data": data}

    return router
