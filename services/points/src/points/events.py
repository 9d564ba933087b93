"""What points consumes (member lifecycle, points commands, and through `earning` the purchase
events of every earner) and answers.

Commands are published on `points.credit.requested.<sender>` and `points.spend.requested.<sender>`:
the subject's last token is the sending service, and the broker lets a service publish only the
commands its declaration names, so points takes the sender from the subject, never from a header.
Each event takes effect once: the kit's inbox records it in the same transaction as its effect.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Any

from google.protobuf.message import Message
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.kit.errors import DomainError, InvalidArgument, PermissionDenied
from kizuna.kit.events import Consumer, Event, durable_name, publish
from kizuna.kit.service import Runtime
from kizuna.points.v1 import events_pb2 as ev
from kizuna.points.v1 import points_pb2 as pb
from sqlmodel.ext.asyncio.session import AsyncSession

from points import bounds, campaigns, crediting, earning, idempotency, ledger, spending, wallets
from points.grpc_api import CREDIT_KINDS, capture_response, credit_response, ledger_of
from points.journal import ts
from points.models import Wallet
from points.settings import Settings

Points = Runtime[Settings]

log = logging.getLogger("points.events")


# ---- members ---------------------------------------------------------------------------------


async def on_member(runtime: Points, session: AsyncSession, event: Event) -> None:
    now = ledger_of(runtime).clock.now()
    if event.subject == "identity.member.registered":
        member_id = event.parse(identity.MemberRegistered).member_id
        if not 0 < len(member_id) <= 100:
            raise InvalidArgument("member_id must be 1-100 characters")
        if await wallets.lock_wallet(session, member_id) is not None:
            return  # known already (a repeated registration): no second welcome
        wallet = await wallets.register_member(session, member_id, now)
        settings = runtime.settings
        try:
            async with session.begin_nested():
                await welcome(session, wallet, now, bounds.Limits.of(settings), settings.regular_expiry_months)
        except DomainError as refused:
            # Joining never waits on a bonus (e.g. points' own daily budget is spent): the member
            # is registered without it, and operators see why.
            log.warning("welcome bonus for %s refused: %s", member_id, refused.message)


# ---- commands --------------------------------------------------------------------------------

_REJECTION = {
    "invalid_argument": ev.REJECTION_REASON_INVALID_ARGUMENT,
    "failed_precondition": ev.REJECTION_REASON_INSUFFICIENT_POINTS,
    "not_found": ev.REJECTION_REASON_MEMBER_NOT_ACTIVE,
    "already_exists": ev.REJECTION_REASON_IDEMPOTENCY_CONFLICT,
    "permission_denied": ev.REJECTION_REASON_NOT_AUTHORIZED,
    "unauthenticated": ev.REJECTION_REASON_NOT_AUTHORIZED,
}


COMMANDS = ("points.credit.requested", "points.spend.requested")


def _sender(event: Event) -> str:
    """The service that sent a command: the subject's last token (the broker enforces it)."""
    base, _, sender = event.subject.rpartition(".")
    return sender if base in COMMANDS else ""


async def on_command(runtime: Points, session: AsyncSession, event: Event) -> None:
    settings, now = runtime.settings, ledger_of(runtime).clock.now()
    sender = _sender(event)
    msg: ev.CreditRequested | ev.SpendRequested
    if not sender:
        raise InvalidArgument(f"{event.subject!r} does not name its sender as the last token")
    if event.subject.startswith("points.credit.requested."):
        msg = event.parse(ev.CreditRequested)
        command, member_id = ev.COMMAND_KIND_CREDIT, msg.member_id
        request: Message = pb.CreditRequest(
            member_id=msg.member_id,
            amount=msg.amount,
            kind=msg.kind,
            reason=msg.reason,
            source_service=msg.source_service,
            source_ref=msg.source_ref,
            idempotency_key=msg.idempotency_key,
            **({"expires_at": msg.expires_at} if msg.HasField("expires_at") else {}),
        )
        kind = CREDIT_KINDS.get(msg.kind)
        expires = msg.expires_at.ToDatetime(tzinfo=now.tzinfo) if msg.HasField("expires_at") else None

        async def effect(s: AsyncSession, wallet: Any, at: datetime) -> Message:
            if msg.source_service != sender:
                raise PermissionDenied(f"{sender!r} may not credit as {msg.source_service!r}")
            if kind is None:
                # The same rule as PointsService.Credit: a credit says which kind of points it gives.
                raise InvalidArgument("kind must be CREDIT_KIND_REGULAR or CREDIT_KIND_LIMITED_TIME")
            done = await crediting.credit(
                s,
                wallet,
                at,
                member_id=msg.member_id,
                amount=msg.amount,
                kind=kind,
                reason=msg.reason,
                source_service=msg.source_service,
                source_ref=msg.source_ref,
                expires_at=expires,
                key=msg.idempotency_key,
                regular_expiry_months=settings.regular_expiry_months,
                limits=bounds.Limits.of(settings),
            )
            return credit_response(done)

        response_type: type[Message] = pb.CreditResponse
        operation = "credit"
    elif event.subject.startswith("points.spend.requested."):
        msg = event.parse(ev.SpendRequested)
        command, member_id = ev.COMMAND_KIND_SPEND, msg.member_id
        request = msg
        authorized = await _member_authorized(runtime, msg.member_authorization, msg.member_id)

        async def effect(s: AsyncSession, wallet: Any, at: datetime) -> Message:
            if not authorized or msg.source_service != sender:
                raise PermissionDenied("the member's authorization is missing, invalid or expired")
            reserve = spending.ReserveArgs(
                member_id=msg.member_id,
                amount=msg.amount,
                ttl_seconds=0,
                reason=msg.reason,
                source_service=msg.source_service,
                source_ref=msg.source_ref,
                idempotency_key=msg.idempotency_key,
            )
            held = await spending.reserve(
                s, wallet, at, caller=msg.source_service, request=reserve, default_ttl=60, max_ttl=60
            )
            done = await spending.capture(
                s,
                wallet,
                at,
                caller=msg.source_service,
                request=spending.CaptureArgs(held.reservation_id, 0, msg.idempotency_key),
                event_reservation_id=False,
            )
            return capture_response(done)

        response_type = pb.CaptureResponse
        operation = "spend"
    else:
        return
    outcome = await idempotency.apply_idempotent(
        session,
        caller=sender,
        key=msg.idempotency_key,
        operation=operation,
        request=request,
        member_id=member_id,
        effect=effect,
        response_type=response_type,
        now=now,
    )
    if isinstance(outcome, DomainError):
        reason = _REJECTION.get(outcome.code, ev.REJECTION_REASON_UNSPECIFIED)
        if isinstance(outcome, wallets.OverBudget):
            reason = ev.REJECTION_REASON_BUDGET_EXCEEDED
        await publish(
            session,
            "points.command.rejected",
            ev.CommandRejected(
                idempotency_key=msg.idempotency_key,
                command=command,
                reason=reason,
                message=outcome.message,
                member_id=member_id,
                source_service=msg.source_service,
                source_ref=msg.source_ref,
                rejected_at=ts(now),
            ),
            member_id=member_id,
        )


async def _member_authorized(runtime: Points, token: str, member_id: str) -> bool:
    if not token:
        return False
    try:
        member = await runtime.verifier.verify(token)
    except DomainError:
        return False
    return member.member_id == member_id and member.has_scope("points:spend")


def consumers(runtime: Points) -> list[Consumer]:
    """What points consumes, each handler bound to the running service."""
    return [
        Consumer(
            durable_name("points", "members"),
            ["identity.member.registered"],
            partial(on_member, runtime),
        ),
        *earning.consumers(runtime),
        Consumer(
            durable_name("points", "commands"),
            ["points.credit.requested.*", "points.spend.requested.*"],
            partial(on_command, runtime),
        ),
    ]


async def welcome(session: AsyncSession, wallet: Wallet, now: datetime, limits: bounds.Limits, months: int) -> int:
    """Pay the live welcome campaigns to a member who just joined; returns the points given."""
    given = 0
    for row in await campaigns.live(session, "welcome", now):
        if row.points_expire_at <= now:
            continue
        await crediting.credit(
            session,
            wallet,
            now,
            member_id=wallet.member_id,
            amount=row.fixed_bonus,
            kind=ledger.LIMITED_TIME,
            reason=f"Welcome bonus: {row.name}",
            source_service="points",
            source_ref=f"welcome:{row.id}",
            expires_at=row.points_expire_at,
            key=f"welcome:{row.id}:{wallet.member_id}",
            regular_expiry_months=months,
            limits=limits,
        )
        given += row.fixed_bonus
    return given
