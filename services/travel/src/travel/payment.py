"""Paying for a booking: points (the kit's PointsClient) and card (PaymentsService) over gRPC.

A thin adapter: each method is one RPC with travel's service token, a deadline and the saga's
idempotency key, so every call may be retried. Peer errors become `PaymentError` with a reason
the member can read; anything else (a bug, the network) propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from kizuna.common.v1 import common_pb2
from kizuna.fintech.v1 import fintech_pb2, fintech_pb2_grpc
from kizuna.kit.auth import ServiceTokenClient, call_metadata
from kizuna.kit.errors import DomainError, Unavailable
from kizuna.kit.points import PointsClient
from kizuna.kit.rpc import client_channel

CARD_SCOPE = "fintech:pay"
T = TypeVar("T")
MERCHANT = fintech_pb2.Merchant(merchant_id="kizuna-travel", name="KIZUNA TRAVEL")


class PaymentError(Exception):
    """A payment step did not go through; `reason` is shown to the member."""

    def __init__(self, reason: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class CardAuthorization:
    authorization_id: str
    approved: bool
    decline_reason: str


def _money(amount_minor: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount_minor, currency=currency)


class PaymentGateway:
    def __init__(self, points_addr: str, fintech_addr: str, tokens: ServiceTokenClient | None, timeout: float) -> None:
        self.points = PointsClient(points_addr, tokens, service="travel", timeout=timeout)
        self._fintech_channel = client_channel(fintech_addr, retry_services=["kizuna.fintech.v1.PaymentsService"])
        self.cards = fintech_pb2_grpc.PaymentsServiceStub(self._fintech_channel)
        self._tokens = tokens
        self.timeout = timeout

    async def close(self) -> None:
        await self.points.close()
        await self._fintech_channel.close()

    async def _metadata(self, scope: str, member_token: str | None = None) -> list[tuple[str, str]]:
        if self._tokens is None:
            raise Unavailable("travel cannot take payments: KIZUNA_CLIENT_SECRET is not set")
        return list(call_metadata(await self._tokens.token(scope), member_token))

    async def _call(self, what: str, rpc, request, scope: str, member_token: str | None = None):  # type: ignore[no-untyped-def]
        try:
            return await rpc(request, metadata=await self._metadata(scope, member_token), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise PaymentError(f"{what}: {exc.details() or exc.code().name}", exc.code()) from exc

    # ---- points -----------------------------------------------------------------------------
    @staticmethod
    async def _points(call: Awaitable[T]) -> T:
        try:
            return await call
        except DomainError as exc:
            raise PaymentError(exc.message, exc.grpc_status) from exc

    async def reserve_points(
        self, *, member_id: str, amount: int, booking_id: str, reason: str, ttl_seconds: int, member_token: str
    ) -> str:
        return await self._points(
            self.points.reserve(
                member_id=member_id,
                amount=amount,
                member_token=member_token,
                reason=reason,
                ref=booking_id,
                key=f"{booking_id}:points-reserve",
                ttl_seconds=ttl_seconds,
            )
        )

    async def capture_points(self, *, reservation_id: str, booking_id: str) -> None:
        await self._points(self.points.capture(reservation_id, f"{booking_id}:points-capture"))

    async def void_points(self, *, reservation_id: str, booking_id: str) -> None:
        await self._points(self.points.void(reservation_id, f"{booking_id}:points-void"))

    async def refund_points(
        self, *, reservation_id: str, amount: int, booking_id: str, purpose: str, reason: str
    ) -> int:
        key = f"{booking_id}:points-refund-{purpose}"
        return await self._points(self.points.refund(reservation_id, key, amount=amount, reason=reason))

    # ---- card -------------------------------------------------------------------------------
    async def authorize_card(
        self, *, member_id: str, amount_minor: int, currency: str, booking_id: str, member_token: str
    ) -> CardAuthorization:
        """Fintech needs the member's own authorization (their token with fintech:pay) to charge their card."""
        request = fintech_pb2.AuthorizeRequest(
            member_id=member_id,
            amount=_money(amount_minor, currency),
            merchant=MERCHANT,
            idempotency_key=f"{booking_id}:card-authorize",
        )
        response = await self._call("card", self.cards.Authorize, request, CARD_SCOPE, member_token)
        approved = response.status == fintech_pb2.AUTHORIZATION_STATUS_APPROVED
        reason = "" if approved else fintech_pb2.DeclineReason.Name(response.decline_reason)
        return CardAuthorization(str(response.authorization_id), approved, reason)

    async def capture_card(self, *, authorization_id: str, booking_id: str) -> str:
        request = fintech_pb2.CaptureRequest(
            authorization_id=authorization_id, idempotency_key=f"{booking_id}:card-capture"
        )
        response = await self._call("card", self.cards.Capture, request, CARD_SCOPE)
        return str(response.capture_id)

    async def void_card(self, *, authorization_id: str, booking_id: str) -> None:
        request = fintech_pb2.VoidRequest(authorization_id=authorization_id, idempotency_key=f"{booking_id}:card-void")
        await self._call("card", self.cards.Void, request, CARD_SCOPE)

    async def refund_card(
        self, *, authorization_id: str, amount_minor: int, currency: str, booking_id: str, purpose: str
    ) -> None:
        request = fintech_pb2.RefundRequest(
            authorization_id=authorization_id,
            amount=_money(amount_minor, currency),
            idempotency_key=f"{booking_id}:card-refund-{purpose}",
        )
        await self._call("card", self.cards.Refund, request, CARD_SCOPE)
