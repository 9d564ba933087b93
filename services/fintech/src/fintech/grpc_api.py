"""PaymentsService over gRPC: translate, check who calls, run the card domain once per key."""

from __future__ import annotations

from typing import Any

import grpc
from kizuna.fintech.v1 import fintech_pb2, fintech_pb2_grpc
from kizuna.kit.auth import current_call
from kizuna.kit.clock import timestamp
from kizuna.kit.service import Runtime
from sqlmodel.ext.asyncio.session import AsyncSession

from fintech import cards
from fintech.cards import MerchantRef, money_pb
from fintech.context import fintech_of
from fintech.idempotency import run_once

PAY_SCOPE = "fintech:pay"

_STATUS = {
    cards.APPROVED: fintech_pb2.AUTHORIZATION_STATUS_APPROVED,
    cards.DECLINED: fintech_pb2.AUTHORIZATION_STATUS_DECLINED,
}
_REASON = {
    "": fintech_pb2.DECLINE_REASON_UNSPECIFIED,
    cards.LIMIT: fintech_pb2.DECLINE_REASON_LIMIT,
    cards.BLOCKED_CARD: fintech_pb2.DECLINE_REASON_BLOCKED_CARD,
    cards.FRAUD_RULE: fintech_pb2.DECLINE_REASON_FRAUD_RULE,
    cards.EXPIRED_CARD: fintech_pb2.DECLINE_REASON_EXPIRED_CARD,
    cards.CURRENCY: fintech_pb2.DECLINE_REASON_CURRENCY_NOT_SUPPORTED,
}


def authorize_response(decision: cards.AuthorizationDecision) -> fintech_pb2.AuthorizeResponse:
    response = fintech_pb2.AuthorizeResponse(
        authorization_id=decision.authorization_id,
        status=_STATUS[decision.status],
        decline_reason=_REASON[decision.decline_reason],
        available_credit=money_pb(decision.available_minor, decision.currency),
    )
    if decision.expires_at is not None:
        response.expires_at.CopyFrom(timestamp(decision.expires_at))
    return response


class PaymentsApi(fintech_pb2_grpc.PaymentsServiceServicer):
    def __init__(self, runtime: Runtime[Any]) -> None:
        self.ctx = fintech_of(runtime)

    async def Authorize(
        self, request: fintech_pb2.AuthorizeRequest, context: grpc.aio.ServicerContext
    ) -> fintech_pb2.AuthorizeResponse:
        auth = current_call()
        caller = auth.require_service_scope(PAY_SCOPE).client_id
        auth.require_member(request.member_id, PAY_SCOPE)
        ctx = self.ctx
        merchant = MerchantRef(request.merchant.merchant_id, request.merchant.name)

        async def operation(session: AsyncSession) -> cards.AuthorizationDecision:
            card = await cards.require_card(session, ctx, request.member_id)
            return await cards.authorize(
                session,
                ctx,
                card=card,
                client_id=caller,
                merchant=merchant,
                amount_minor=request.amount.amount_minor,
                currency=request.amount.currency,
            )

        result = await run_once(
            ctx.db,
            ctx.clock,
            scope=f"{caller}:authorize",
            key=request.idempotency_key,
            request={
                "member_id": request.member_id,
                "amount": [request.amount.amount_minor, request.amount.currency],
                "merchant": [merchant.merchant_id, merchant.name],
            },
            operation=operation,
            result=cards.AuthorizationDecision,
        )
        return authorize_response(result)

    async def Capture(
        self, request: fintech_pb2.CaptureRequest, context: grpc.aio.ServicerContext
    ) -> fintech_pb2.CaptureResponse:
        caller = current_call().require_service_scope(PAY_SCOPE).client_id
        ctx = self.ctx
        amount = request.amount.amount_minor if request.HasField("amount") else None

        async def operation(session: AsyncSession) -> cards.Captured:
            return await cards.capture(
                session,
                ctx,
                client_id=caller,
                authorization_id=request.authorization_id,
                amount_minor=amount,
                currency=request.amount.currency,
            )

        result = await run_once(
            ctx.db,
            ctx.clock,
            scope=f"{caller}:capture",
            key=request.idempotency_key,
            request={"authorization_id": request.authorization_id, "amount": [amount, request.amount.currency]},
            operation=operation,
            result=cards.Captured,
        )
        return fintech_pb2.CaptureResponse(
            capture_id=result.capture_id,
            captured=money_pb(result.captured_minor, result.currency),
            released=money_pb(result.released_minor, result.currency),
        )

    async def Void(
        self, request: fintech_pb2.VoidRequest, context: grpc.aio.ServicerContext
    ) -> fintech_pb2.VoidResponse:
        caller = current_call().require_service_scope(PAY_SCOPE).client_id
        ctx = self.ctx

        async def operation(session: AsyncSession) -> cards.Voided:
            return await cards.void(session, ctx, client_id=caller, authorization_id=request.authorization_id)

        result = await run_once(
            ctx.db,
            ctx.clock,
            scope=f"{caller}:void",
            key=request.idempotency_key,
            request={"authorization_id": request.authorization_id},
            operation=operation,
            result=cards.Voided,
        )
        return fintech_pb2.VoidResponse(released=money_pb(result.released_minor, result.currency))

    async def Refund(
        self, request: fintech_pb2.RefundRequest, context: grpc.aio.ServicerContext
    ) -> fintech_pb2.RefundResponse:
        caller = current_call().require_service_scope(PAY_SCOPE).client_id
        ctx = self.ctx
        amount = request.amount.amount_minor if request.HasField("amount") else None
        target = request.WhichOneof("target") or ""

        async def operation(session: AsyncSession) -> cards.Refunded:
            return await cards.refund(
                session,
                ctx,
                client_id=caller,
                capture_id=request.capture_id,
                authorization_id=request.authorization_id,
                amount_minor=amount,
                currency=request.amount.currency,
            )

        result = await run_once(
            ctx.db,
            ctx.clock,
            scope=f"{caller}:refund",
            key=request.idempotency_key,
            request={
                "target": [target, request.capture_id or request.authorization_id],
                "amount": [amount, request.amount.currency],
            },
            operation=operation,
            result=cards.Refunded,
        )
        return fintech_pb2.RefundResponse(
            refund_id=result.refund_id, refunded=money_pb(result.refunded_minor, result.currency)
        )
