"""What points consumes (member lifecycle, purchases to earn on, points commands) and answers.

Purchases earn in two steps: paid/confirmed -> pending (shown as GetBalanceResponse.earning),
completed -> granted; cancelled -> pending dropped or the grant clawed back; refunded -> the
refunded share clawed back. Card purchases are granted when posted. Each event takes effect
once: the kit's inbox records it in the same transaction as its effect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from google.protobuf.message import Message
from kizuna.fintech.v1 import events_pb2 as fintech
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.kit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from kizuna.kit.events import Consumer, Event, publish
from kizuna.kit.service import Runtime
from kizuna.points.v1 import events_pb2 as ev
from kizuna.points.v1 import points_pb2 as pb
from kizuna.shop.v1 import events_pb2 as shop
from kizuna.travel.v1 import events_pb2 as travel
from sqlmodel.ext.asyncio.session import AsyncSession

from points import ledger, store
from points.grpc_api import CREDIT_KINDS, ledger_of
from points.models import PendingEarn
from points.settings import Settings

Points = Runtime[Settings]

log = logging.getLogger("points.events")


# ---- members ---------------------------------------------------------------------------------


async def on_member(runtime: Points, session: AsyncSession, event: Event) -> None:
    now = ledger_of(runtime).clock.now()
    if event.subject == "identity.member.registered":
        await store.register_member(session, event.parse(identity.MemberRegistered).member_id, now)


# ---- earning from purchases --------------------------------------------------------------------


@dataclass(frozen=True)
class Purchase:
    service: str
    ref: str
    member_id: str
    # The money paid (points used to pay earn nothing, so they are not part of it).
    amount_minor: int
    currency: str
    refunded_minor: int = 0
    # Regular points the merchant's own campaign adds, funded by the merchant (shop orders).
    merchant_bonus: int = 0


def _purchase(event: Event) -> tuple[str, Purchase]:
    """(what happened, the purchase) for a purchase event."""
    s = event.subject
    msg: Any
    if s.startswith("shop.order."):
        msg = event.parse(
            {
                "paid": shop.OrderPaid,
                "completed": shop.OrderCompleted,
                "cancelled": shop.OrderCancelled,
                "refunded": shop.OrderRefunded,
            }[s.rsplit(".", 1)[1]]
        )
        refunded = msg.refunded.amount_minor if s.endswith("refunded") else 0
        step = {"paid": "pending", "completed": "grant", "cancelled": "cancel", "refunded": "refund"}[
            s.rsplit(".", 1)[1]
        ]
        # Earn on the money paid by card, not on the points used: a refund's money then claws
        # back its full share (refunding all the money takes back everything the order earned).
        if msg.HasField("card_amount"):
            paid = msg.card_amount.amount_minor
        else:
            paid = ledger.money_paid_minor(msg.total.amount_minor, msg.points_used)
        return step, Purchase(
            "shop",
            msg.order_id,
            msg.member_id,
            max(paid, 0),
            msg.total.currency,
            refunded,
            msg.merchant_bonus_points,
        )
    if s.startswith("travel.booking."):
        name = s.rsplit(".", 1)[1]
        msg = event.parse(
            {
                "confirmed": travel.BookingConfirmed,
                "completed": travel.BookingCompleted,
                "cancelled": travel.BookingCancelled,
            }[name]
        )
        step = {"confirmed": "pending", "completed": "grant", "cancelled": "cancel"}[name]
        # Bookings carry the total and the points used on it: they earn on the rest, the money paid.
        paid = ledger.money_paid_minor(msg.total.amount_minor, msg.points_used)
        return step, Purchase("travel", msg.booking_id, msg.member_id, paid, msg.total.currency)
    if s == "fintech.card_purchase.posted":
        msg = event.parse(fintech.CardPurchasePosted)
        return "posted", Purchase(
            "fintech", msg.purchase_id, msg.member_id, msg.amount.amount_minor, msg.amount.currency
        )
    msg = event.parse(fintech.CardPurchaseRefunded)
    return "refund", Purchase(
        "fintech", msg.purchase_id, msg.member_id, 0, msg.amount.currency, msg.amount.amount_minor
    )


async def on_purchase(runtime: Points, session: AsyncSession, event: Event) -> None:
    step, purchase = _purchase(event)
    settings, now = runtime.settings, ledger_of(runtime).clock.now()
    wallet = await store.lock_wallet(session, purchase.member_id)
    if wallet is None or wallet.status != "active":
        # identity's registration may not have arrived yet: fail, so the event is retried.
        raise NotFound(f"unknown member {purchase.member_id!r}")
    await store.settle_due(session, wallet, now)
    pending = await session.get(PendingEarn, (purchase.service, purchase.ref), populate_existing=True)
    months = settings.regular_expiry_months
    if step in ("pending", "posted") or (step == "grant" and pending is None):
        if pending is not None:
            return
        quote = await store.quote_and_count(
            session,
            wallet,
            settings.earn_rules(),
            purchase.service,
            ledger.currency_units(purchase.amount_minor, purchase.currency),
            now,
        )
        pending = PendingEarn(
            source_service=purchase.service,
            source_ref=purchase.ref,
            member_id=purchase.member_id,
            purchase_minor=purchase.amount_minor,
            currency=purchase.currency or "JPY",
            regular=quote.regular,
            bonus=quote.bonus,
            merchant_bonus=max(purchase.merchant_bonus, 0),
            earned=quote.total + max(purchase.merchant_bonus, 0),
            bonus_expires_at=quote.bonus_expires_at,
            explanation=quote.explanation,
            status="pending",
            created_at=now,
        )
        session.add(pending)
        if step == "pending":
            return
    if pending is None:
        # A cancel or refund of a purchase that earned nothing (or whose earning points never
        # saw): nothing to take back, and retrying would not change that.
        log.info(
            "%s of %s %s has no earning to undo; event %s acknowledged without effect",
            step,
            purchase.service,
            purchase.ref,
            event.id,
        )
        return
    if step in ("grant", "posted") and pending.status == "pending":
        quote = ledger.EarnQuote(pending.regular, pending.bonus, pending.bonus_expires_at, 0, (), pending.explanation)
        if pending.bonus_expires_at is not None and pending.bonus_expires_at <= now:
            # The campaign points expired before the purchase completed: never given, never taken back.
            quote = ledger.EarnQuote(pending.regular, 0, None, 0, (), pending.explanation)
            pending.earned -= pending.bonus
            pending.bonus = 0
        await store.grant(
            session,
            wallet,
            now,
            quote=quote,
            service=purchase.service,
            source_ref=purchase.ref,
            key=event.id,
            regular_expiry_months=months,
        )
        if pending.merchant_bonus > 0:
            label = ledger.SERVICE_LABELS.get(purchase.service, purchase.service)
            await store.credit(
                session,
                wallet,
                now,
                member_id=wallet.member_id,
                amount=pending.merchant_bonus,
                kind=ledger.REGULAR,
                reason=f"Merchant campaign bonus at {label} on {purchase.ref}",
                source_service=purchase.service,
                source_ref=purchase.ref,
                expires_at=None,
                key=event.id,
                regular_expiry_months=months,
            )
        pending.status = "granted"
    elif step == "cancel":
        if pending.status == "pending":
            pending.status = "cancelled"
            _give_back_cap_room(wallet, pending, pending.regular + pending.bonus)
        elif pending.status == "granted":
            await _claw_back(session, wallet, now, purchase, 0, f"{purchase.ref} cancelled", event.id)
            pending.status = "cancelled"
    elif step == "refund" and pending.status in ("pending", "granted"):
        pending.refunded_minor = min(pending.refunded_minor + purchase.refunded_minor, pending.purchase_minor)
        share = ledger.refund_take_back(
            pending.earned, pending.taken_back, pending.refunded_minor, pending.purchase_minor
        )
        pending.taken_back += share
        if pending.status == "pending":
            within_caps, left = 0, share
            for part in ("bonus", "merchant_bonus", "regular"):
                cut = min(getattr(pending, part), left)
                setattr(pending, part, getattr(pending, part) - cut)
                left -= cut
                within_caps += cut if part != "merchant_bonus" else 0
            _give_back_cap_room(wallet, pending, within_caps)
        elif share > 0:
            await _claw_back(session, wallet, now, purchase, share, f"{purchase.ref} refunded", event.id)
    session.add(pending)


def _give_back_cap_room(wallet: Any, pending: PendingEarn, points: int) -> None:
    """Points a pending earning no longer gives stop counting against the month's earn cap."""
    if wallet.earn_month == ledger.month_key(pending.created_at):
        wallet.earned_this_month = max(wallet.earned_this_month - points, 0)


async def _claw_back(
    session: AsyncSession, wallet: Any, now: datetime, purchase: Purchase, amount: int, reason: str, key: str
) -> None:
    request = pb.ClawbackRequest(
        source_ref=purchase.ref, source_service=purchase.service, amount=amount, reason=reason, idempotency_key=key
    )
    try:
        async with session.begin_nested():
            await store.clawback(session, wallet, now, caller=purchase.service, request=request, at_most=True)
    except (FailedPrecondition, NotFound):
        pass  # nothing (left) to take back: the purchase earned nothing, or it was taken or expired already


# ---- commands --------------------------------------------------------------------------------

_REJECTION = {
    "invalid_argument": ev.REJECTION_REASON_INVALID_ARGUMENT,
    "failed_precondition": ev.REJECTION_REASON_INSUFFICIENT_POINTS,
    "not_found": ev.REJECTION_REASON_MEMBER_NOT_ACTIVE,
    "already_exists": ev.REJECTION_REASON_IDEMPOTENCY_CONFLICT,
    "permission_denied": ev.REJECTION_REASON_NOT_AUTHORIZED,
    "unauthenticated": ev.REJECTION_REASON_NOT_AUTHORIZED,
}


def _publisher(event: Event) -> str:
    """The service that published the event (the relay sets ce-source to kizuna/<service>)."""
    return event.source.removeprefix("kizuna/")


async def on_command(runtime: Points, session: AsyncSession, event: Event) -> None:
    settings, now = runtime.settings, ledger_of(runtime).clock.now()
    msg: Message
    if event.subject == "points.credit.requested":
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
            if msg.source_service != _publisher(event) or msg.source_service not in settings.command_credit_services:
                raise PermissionDenied(f"{_publisher(event)!r} may not credit as {msg.source_service!r}")
            if kind is None:
                # The same rule as PointsService.Credit: a credit says which kind of points it gives.
                raise InvalidArgument("kind must be CREDIT_KIND_REGULAR or CREDIT_KIND_LIMITED_TIME")
            return await store.credit(
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
            )

        response_type: type[Message] = pb.CreditResponse
        operation = "credit"
    elif event.subject == "points.spend.requested":
        msg = event.parse(ev.SpendRequested)
        command, member_id = ev.COMMAND_KIND_SPEND, msg.member_id
        request = msg
        authorized = await _member_authorized(runtime, msg.member_authorization, msg.member_id)

        async def effect(s: AsyncSession, wallet: Any, at: datetime) -> Message:
            if not authorized or msg.source_service != _publisher(event):
                raise PermissionDenied("the member's authorization is missing, invalid or expired")
            reserve = pb.ReserveRequest(
                member_id=msg.member_id,
                amount=msg.amount,
                reason=msg.reason,
                source_service=msg.source_service,
                source_ref=msg.source_ref,
                idempotency_key=msg.idempotency_key,
            )
            held = await store.reserve(
                s, wallet, at, caller=msg.source_service, request=reserve, default_ttl=60, max_ttl=60
            )
            return await store.capture(
                s,
                wallet,
                at,
                caller=msg.source_service,
                request=pb.CaptureRequest(reservation_id=held.reservation_id, idempotency_key=msg.idempotency_key),
                event_reservation_id=False,
            )

        response_type = pb.CaptureResponse
        operation = "spend"
    else:
        return
    outcome = await store.apply_idempotent(
        session,
        caller=msg.source_service or _publisher(event),
        key=msg.idempotency_key,
        operation=operation,
        request=request,
        member_id=member_id,
        effect=effect,
        response_type=response_type,
        now=now,
    )
    if isinstance(outcome, DomainError):
        publish(
            session,
            "points.command.rejected",
            ev.CommandRejected(
                idempotency_key=msg.idempotency_key,
                command=command,
                reason=_REJECTION.get(outcome.code, ev.REJECTION_REASON_UNSPECIFIED),
                message=outcome.message,
                member_id=member_id,
                source_service=msg.source_service,
                source_ref=msg.source_ref,
                rejected_at=store.ts(now),
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
            "points-members",
            ["identity.member.registered"],
            partial(on_member, runtime),
        ),
        Consumer(
            "points-shop-earn",
            ["shop.order.paid", "shop.order.completed", "shop.order.cancelled", "shop.order.refunded"],
            partial(on_purchase, runtime),
        ),
        Consumer(
            "points-travel-earn",
            ["travel.booking.confirmed", "travel.booking.completed", "travel.booking.cancelled"],
            partial(on_purchase, runtime),
        ),
        Consumer(
            "points-fintech-earn",
            ["fintech.card_purchase.posted", "fintech.card_purchase.refunded"],
            partial(on_purchase, runtime),
        ),
        Consumer(
            "points-commands", ["points.credit.requested", "points.spend.requested"], partial(on_command, runtime)
        ),
    ]
