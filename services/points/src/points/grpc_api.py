"""PointsService over gRPC: check who may call, translate, run the ledger operation, translate back."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from kizuna.kit.auth import CallAuth, current_call
from kizuna.kit.errors import InvalidArgument, PermissionDenied
from kizuna.kit.service import Runtime
from kizuna.points.v1 import points_pb2 as pb
from kizuna.points.v1 import points_pb2_grpc
from opentelemetry import context as otel_context

from points import balances, campaigns, crediting, explain, ledger, rewards, spending
from points.bounds import Limits, check_money
from points.group_commit import CaptureCall, CaptureGroups, CreditCall, CreditGroups, ReserveCall, ReserveGroups
from points.idempotency import Ledger
from points.journal import ts
from points.ledger import LIMITED_TIME, REGULAR, Clock
from points.settings import Settings
from points.wallets import Member

CREDIT_KINDS = {pb.CREDIT_KIND_REGULAR: REGULAR, pb.CREDIT_KIND_LIMITED_TIME: LIMITED_TIME}


def ledger_of(runtime: Runtime[Settings]) -> Ledger:
    """The runtime's one Ledger (and Clock, which tests move)."""
    if "ledger" not in runtime.state:
        clock = runtime.state.setdefault("clock", Clock())
        runtime.state["ledger"] = Ledger(runtime.db, runtime.settings, clock)
    ledger: Ledger = runtime.state["ledger"]
    return ledger


def _may_read(auth: CallAuth, member_id: str) -> None:
    """The member's own token with points:read (directly or passed on by a service), or an
    ecosystem service with points:read on its own (identity gives that scope to first-party
    clients only). A member token never reads another member's points."""
    auth.require_member_or_service(member_id, "points:read", "points:read")


def _in_range(amount: int, limits: Limits) -> None:
    """An amount of points no single operation may move is refused before anything is looked up."""
    if amount < 0 or amount > limits.max_credit_points:
        raise InvalidArgument(f"amount must be between 0 and {limits.max_credit_points}")


def _own_service(caller: str, named: str) -> str:
    if named and named != caller:
        raise PermissionDenied(f"service {caller!r} cannot act as {named!r}")
    return caller


# ---- translation between the contract's messages and the ledger's domain values ---------------


def credit_response(done: crediting.Credited) -> pb.CreditResponse:
    return pb.CreditResponse(entry_id=done.entry_id, balance_after=done.balance_after)


def earn_response(done: rewards.Earned) -> pb.EarnResponse:
    return pb.EarnResponse(
        earned=done.earned,
        bonus=done.bonus,
        explanation=done.explanation,
        entry_id=done.entry_id,
        bonus_entry_id=done.bonus_entry_id,
        balance_after=done.balance_after,
        rate_bp=done.rate_bp,
    )


def reserve_response(held: spending.Reserved) -> pb.ReserveResponse:
    return pb.ReserveResponse(
        reservation_id=held.reservation_id, expires_at=ts(held.expires_at), balance_after=held.balance_after
    )


def capture_args(request: pb.CaptureRequest) -> spending.CaptureArgs:
    return spending.CaptureArgs(request.reservation_id, request.amount, request.idempotency_key)


def capture_response(done: spending.Captured) -> pb.CaptureResponse:
    return pb.CaptureResponse(
        captured=done.captured, returned=done.returned, entry_id=done.entry_id, balance_after=done.balance_after
    )


def refund_args(request: pb.RefundRequest) -> spending.RefundArgs:
    return spending.RefundArgs(
        target=request.WhichOneof("target"),
        capture_entry_id=request.capture_entry_id,
        reservation_id=request.reservation_id,
        amount=request.amount,
        reason=request.reason,
        idempotency_key=request.idempotency_key,
    )


def clawback_args(request: pb.ClawbackRequest) -> crediting.ClawbackArgs:
    return crediting.ClawbackArgs(
        target=request.WhichOneof("target"),
        credit_entry_id=request.credit_entry_id,
        source_ref=request.source_ref,
        source_service=request.source_service,
        amount=request.amount,
        reason=request.reason,
        idempotency_key=request.idempotency_key,
    )


async def capture_effect(
    session: Any, wallet: Any, now: datetime, *, caller: str, request: spending.CaptureArgs
) -> pb.CaptureResponse:
    return capture_response(await spending.capture(session, wallet, now, caller=caller, request=request))


async def void_effect(
    session: Any, wallet: Any, now: datetime, *, caller: str, request: spending.VoidArgs
) -> pb.VoidResponse:
    done = await spending.void(session, wallet, now, caller=caller, request=request)
    return pb.VoidResponse(released=done.released, balance_after=done.balance_after)


async def refund_effect(
    session: Any, wallet: Any, now: datetime, *, caller: str, request: spending.RefundArgs
) -> pb.RefundResponse:
    done = await spending.refund(session, wallet, now, caller=caller, request=request)
    return pb.RefundResponse(
        refunded=done.refunded,
        expired_not_returned=done.expired_not_returned,
        entry_id=done.entry_id,
        balance_after=done.balance_after,
    )


async def clawback_effect(
    session: Any, wallet: Any, now: datetime, *, caller: str, request: crediting.ClawbackArgs
) -> pb.ClawbackResponse:
    done = await crediting.clawback(session, wallet, now, caller=caller, request=request)
    return pb.ClawbackResponse(
        clawed_back=done.clawed_back,
        debt_created=done.debt_created,
        entry_id=done.entry_id,
        balance_after=done.balance_after,
    )


ENTRY_KINDS = {
    "credit": pb.ENTRY_KIND_CREDIT,
    "spend": pb.ENTRY_KIND_SPEND,
    "refund": pb.ENTRY_KIND_REFUND,
    "clawback": pb.ENTRY_KIND_CLAWBACK,
    "expiry": pb.ENTRY_KIND_EXPIRY,
    "hold": pb.ENTRY_KIND_HOLD,
    "earning": pb.ENTRY_KIND_EARNING,
}


def _entry(line: balances.HistoryLine) -> pb.Entry:
    return pb.Entry(
        entry_id=line.entry_id,
        kind=ENTRY_KINDS[line.kind],
        amount=line.amount,
        explanation=line.explanation,
        source_service=line.source_service,
        source_ref=line.source_ref,
        created_at=ts(line.created_at),
        until=ts(line.until),
    )


class PointsApi(points_pb2_grpc.PointsServiceServicer):
    def __init__(self, runtime: Runtime[Settings]) -> None:
        self.settings = runtime.settings
        self.ledger = ledger_of(runtime)
        self.db = runtime.db
        self.limits = Limits.of(runtime.settings)
        # Credit, Reserve and Capture commit in groups on PostgreSQL (SQLite has one writer at a time).
        on_postgres = runtime.db.engine.dialect.name == "postgresql"
        grouped = runtime.settings.ledger_group_commit and on_postgres
        self.credit_groups = (
            CreditGroups(self.ledger, self.limits, runtime.settings.regular_expiry_months) if grouped else None
        )
        runtime.state["credit_groups"] = self.credit_groups
        self.capture_groups = CaptureGroups(self.ledger) if grouped else None
        runtime.state["capture_groups"] = self.capture_groups
        ttl = (runtime.settings.reservation_default_ttl_seconds, runtime.settings.reservation_max_ttl_seconds)
        self.reserve_groups = ReserveGroups(self.ledger, *ttl) if grouped else None
        runtime.state["reserve_groups"] = self.reserve_groups
        self.balance_reads = balances.BalanceReads(self.db, self.ledger.clock.now) if on_postgres else None
        runtime.state["balance_reads"] = self.balance_reads

    async def GetBalance(self, request: pb.GetBalanceRequest, context: Any) -> pb.GetBalanceResponse:
        _may_read(current_call(), request.member_id)
        if self.balance_reads is not None:
            balance = await self.balance_reads.get(request.member_id)
        else:
            balance = await balances.get_balance(self.db, request.member_id, self.ledger.clock.now())
        response = pb.GetBalanceResponse(
            total=balance.total,
            regular=balance.regular,
            limited_time=balance.limited_time,
            pending=balance.pending,
            debt=balance.debt,
            earning=balance.earning,
        )
        if balance.expiring_soon is not None:
            response.expiring_soon.CopyFrom(
                pb.ExpiringPoints(amount=balance.expiring_soon.amount, expires_at=ts(balance.expiring_soon.expires_at))
            )
        return response

    async def ListEntries(self, request: pb.ListEntriesRequest, context: Any) -> pb.ListEntriesResponse:
        _may_read(current_call(), request.member_id)
        try:
            locale = explain.check_locale(request.locale)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        speaker = explain.Speaker(locale, self.settings.earn_rules().label)
        async with balances.reader(self.db) as conn:
            page = await balances.list_entries(
                conn,
                request.member_id,
                request.page.page_size,
                request.page.page_token,
                now=self.ledger.clock.now(),
                speaker=speaker,
            )
        response = pb.ListEntriesResponse(entries=[_entry(line) for line in page.lines])
        response.page_info.next_page_token = page.next_page_token
        return response

    async def ListLiveCampaigns(
        self, request: pb.ListLiveCampaignsRequest, context: Any
    ) -> pb.ListLiveCampaignsResponse:
        # The same authorization as GetBalance: campaigns are read beside the balance.
        current_call().require_read_scope("points:read", "points:read")
        async with self.db.sessions() as session:
            live = await campaigns.live_now(session, self.settings.earn_rules(), self.ledger.clock.now())
        return pb.ListLiveCampaignsResponse(
            campaigns=[
                pb.LiveCampaign(
                    campaign_id=c.campaign_id,
                    name=c.name,
                    kind=c.kind,
                    services=list(c.services),
                    multiplier=c.multiplier,
                    fixed_bonus=c.fixed_bonus,
                    starts_at=ts(c.starts_at),
                    ends_at=ts(c.ends_at),
                    audience=c.audience,
                )
                for c in live
            ]
        )

    async def Credit(self, request: pb.CreditRequest, context: Any) -> pb.CreditResponse:
        caller = current_call().require_service_scope("points:credit").client_id
        service = _own_service(caller, request.source_service)
        kind = CREDIT_KINDS.get(request.kind)
        expires_at = request.expires_at.ToDatetime(tzinfo=UTC) if request.HasField("expires_at") else None
        if self.credit_groups is not None:
            call = CreditCall(caller, service, request, kind, expires_at, otel_context.get_current())
            done = await self.credit_groups.submit(call)
            if done is not None:
                return done

        async def effect(session: Any, wallet: Any, now: Any) -> pb.CreditResponse:
            if kind is None:
                raise InvalidArgument("kind must be CREDIT_KIND_REGULAR or CREDIT_KIND_LIMITED_TIME")
            done = await crediting.credit(
                session,
                wallet,
                now,
                member_id=request.member_id,
                amount=request.amount,
                kind=kind,
                reason=request.reason,
                source_service=service,
                source_ref=request.source_ref,
                expires_at=expires_at,
                key=request.idempotency_key,
                regular_expiry_months=self.settings.regular_expiry_months,
                limits=self.limits,
            )
            return credit_response(done)

        return await self.ledger.execute(
            caller=caller,
            key=request.idempotency_key,
            operation="credit",
            request=request,
            member=Member(request.member_id),
            effect=effect,
            response_type=pb.CreditResponse,
        )

    async def Earn(self, request: pb.EarnRequest, context: Any) -> pb.EarnResponse:
        caller = current_call().require_service_scope("points:credit").client_id
        service = _own_service(caller, request.source_service)
        earn = partial(
            rewards.earn,
            member_id=request.member_id,
            amount_minor=request.purchase.amount_minor,
            currency=request.purchase.currency or "JPY",
            service=service,
            source_ref=request.source_ref,
            key=request.idempotency_key,
            rules=self.settings.earn_rules(),
            regular_expiry_months=self.settings.regular_expiry_months,
            limits=self.limits,
        )

        async def effect(session: Any, wallet: Any, now: Any) -> pb.EarnResponse:
            return earn_response(await earn(session, wallet, now))

        return await self.ledger.execute(
            caller=caller,
            key=request.idempotency_key,
            operation="earn",
            request=request,
            member=Member(request.member_id),
            effect=effect,
            response_type=pb.EarnResponse,
        )

    async def PreviewEarn(self, request: pb.PreviewEarnRequest, context: Any) -> pb.PreviewEarnResponse:
        _may_read(current_call(), request.member_id)
        if self.settings.earner(request.service) is None:
            raise InvalidArgument(f"{request.service!r} is not a service that earns points")
        check_money(request.purchase.amount_minor, request.purchase.currency, self.limits, "purchase")
        async with self.db.sessions() as session:
            quote = await rewards.preview_earn(
                session,
                self.settings.earn_rules(),
                request.member_id,
                request.service,
                ledger.currency_units(request.purchase.amount_minor, request.purchase.currency or "JPY"),
                self.ledger.clock.now(),
            )
        return pb.PreviewEarnResponse(
            regular=quote.regular,
            bonus=quote.bonus,
            total=quote.total,
            rate_bp=quote.rate_bp,
            explanation=quote.explanation,
            bonus_expires_at=ts(quote.bonus_expires_at),
        )

    async def Reserve(self, request: pb.ReserveRequest, context: Any) -> pb.ReserveResponse:
        auth = current_call()
        caller = auth.require_service_scope("points:spend").client_id
        _in_range(request.amount, self.limits)
        auth.require_member(request.member_id, "points:spend")
        _own_service(caller, request.source_service)
        args = spending.ReserveArgs(
            member_id=request.member_id,
            amount=request.amount,
            ttl_seconds=request.ttl_seconds,
            reason=request.reason,
            source_service=request.source_service,
            source_ref=request.source_ref,
            idempotency_key=request.idempotency_key,
        )
        if self.reserve_groups is not None:
            done = await self.reserve_groups.submit(ReserveCall(caller, args, request, otel_context.get_current()))
            if done is not None:
                return done
        default_ttl = self.settings.reservation_default_ttl_seconds
        max_ttl = self.settings.reservation_max_ttl_seconds

        async def effect(session: Any, wallet: Any, now: Any) -> pb.ReserveResponse:
            held = await spending.reserve(
                session, wallet, now, caller=caller, request=args, default_ttl=default_ttl, max_ttl=max_ttl
            )
            return reserve_response(held)

        return await self.ledger.execute(
            caller=caller,
            key=request.idempotency_key,
            operation="reserve",
            request=request,
            member=Member(request.member_id),
            effect=effect,
            response_type=pb.ReserveResponse,
        )

    async def Capture(self, request: pb.CaptureRequest, context: Any) -> pb.CaptureResponse:
        caller = current_call().require_service_scope("points:spend", "points:credit").client_id
        _in_range(request.amount, self.limits)
        if self.capture_groups is not None:
            done = await self.capture_groups.submit(CaptureCall(caller, request, otel_context.get_current()))
            if done is not None:
                return done
        return await self.ledger.execute(
            caller=caller,
            key=request.idempotency_key,
            operation="capture",
            request=request,
            member=Member(reservation_id=request.reservation_id),
            effect=partial(capture_effect, caller=caller, request=capture_args(request)),
            response_type=pb.CaptureResponse,
        )

    async def Void(self, request: pb.VoidRequest, context: Any) -> pb.VoidResponse:
        caller = current_call().require_service_scope("points:spend", "points:credit").client_id
        return await self.ledger.execute(
            caller=caller,
            key=request.idempotency_key,
            operation="void",
            request=request,
            member=Member(reservation_id=request.reservation_id),
            effect=partial(
                void_effect, caller=caller, request=spending.VoidArgs(request.reservation_id, request.idempotency_key)
            ),
            response_type=pb.VoidResponse,
        )

    async def Refund(self, request: pb.RefundRequest, context: Any) -> pb.RefundResponse:
        caller = current_call().require_service_scope("points:spend", "points:credit").client_id
        _in_range(request.amount, self.limits)
        return await self.ledger.execute(
            caller=caller,
            key=request.idempotency_key,
            operation="refund",
            request=request,
            member=Member(reservation_id=request.capture_entry_id or request.reservation_id),
            effect=partial(refund_effect, caller=caller, request=refund_args(request)),
            response_type=pb.RefundResponse,
        )

    async def Clawback(self, request: pb.ClawbackRequest, context: Any) -> pb.ClawbackResponse:
        caller = current_call().require_service_scope("points:credit").client_id
        _in_range(request.amount, self.limits)
        member_id = await self.ledger.member_of_credit(
            request.credit_entry_id, request.source_service or caller, request.source_ref
        )
        return await self.ledger.execute(
            caller=caller,
            key=request.idempotency_key,
            operation="clawback",
            request=request,
            member=Member(member_id or ""),
            effect=partial(clawback_effect, caller=caller, request=clawback_args(request)),
            response_type=pb.ClawbackResponse,
        )
