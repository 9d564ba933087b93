"""Spending a member's points from any service: PointsService over gRPC.

Every call carries this service's token (client credentials); `reserve` also carries the member's
own token, because only the member can let a service spend their points. Each mutating call takes
the caller's idempotency key, so a saga may retry any step. Refusals from points become the kit's
domain errors (`peer_error`), with the peer named, so the caller's own callers see why.

    points = PointsClient(settings.points_addr, runtime.service_tokens, service="shop")
    reservation = await points.reserve(member_id=m, amount=300, member_token=t, reason="Order o1",
                                       ref="o1", key="o1:reserve")
    await points.capture(reservation, key="o1:capture")

A service that sells something earns its members points by publishing the earning contract
(kizuna.points.v1 earning.proto) on its own stream, in the transaction of its business change:

    await publish_purchase(session, "shop", "paid", reference=order.id, member_id=m, paid_minor=9_000,
                           currency="JPY", points_used=1_000, label=f"Order {order.id}", at=now)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from kizuna.common.v1.common_pb2 import Money
from kizuna.kit.auth import ServiceTokenClient, call_metadata
from kizuna.kit.clock import timestamp
from kizuna.kit.errors import Unavailable
from kizuna.kit.events import publish
from kizuna.kit.rpc import client_channel, peer_error
from kizuna.points.v1 import earning_pb2, points_pb2, points_pb2_grpc
from sqlmodel.ext.asyncio.session import AsyncSession

# The least each call needs: reading a balance does not need the right to spend.
SPEND_SCOPE = "points:spend"
READ_SCOPE = "points:read"


class PointsClient:
    """This service's side of PointsService (balance, reserve, capture, void, refund)."""

    def __init__(self, address: str, tokens: ServiceTokenClient | None, *, service: str, timeout: float = 10.0) -> None:
        self.address = address
        self.service = service
        self.timeout = timeout
        self._tokens = tokens
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> points_pb2_grpc.PointsServiceStub:
        # Opened on first use, inside the running loop.
        if self._channel is None:
            self._channel = client_channel(self.address, retry_services=["kizuna.points.v1.PointsService"])
        return points_pb2_grpc.PointsServiceStub(self._channel)

    async def _call(self, method: str, request: Any, member_token: str | None = None, scope: str = SPEND_SCOPE) -> Any:
        if self._tokens is None:
            raise Unavailable(f"{self.service} has no client secret (KIZUNA_CLIENT_SECRET) to call points")
        metadata = call_metadata(await self._tokens.token(scope), member_token)
        try:
            return await getattr(self._stub(), method)(request, metadata=metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise peer_error("points", exc) from exc

    async def balance(self, member_id: str) -> int:
        """The member's spendable points."""
        reply = await self._call("GetBalance", points_pb2.GetBalanceRequest(member_id=member_id), scope=READ_SCOPE)
        return int(reply.total)

    async def reserve(
        self,
        *,
        member_id: str,
        amount: int,
        member_token: str,
        reason: str,
        ref: str,
        key: str,
        ttl_seconds: int = 0,
    ) -> str:
        """Hold `amount` of the member's points for this service; returns the reservation id."""
        request = points_pb2.ReserveRequest(
            member_id=member_id,
            amount=amount,
            ttl_seconds=ttl_seconds,
            reason=reason,
            source_service=self.service,
            source_ref=ref,
            idempotency_key=key,
        )
        reply = await self._call("Reserve", request, member_token)
        return str(reply.reservation_id)

    async def capture(self, reservation_id: str, key: str, amount: int = 0) -> points_pb2.CaptureResponse:
        """Spend the reservation (all of it, or `amount`; the rest returns to the member)."""
        request = points_pb2.CaptureRequest(reservation_id=reservation_id, amount=amount, idempotency_key=key)
        reply: points_pb2.CaptureResponse = await self._call("Capture", request)
        return reply

    async def void(self, reservation_id: str, key: str) -> int:
        """Release a reservation that will not be captured; returns the points released."""
        reply = await self._call("Void", points_pb2.VoidRequest(reservation_id=reservation_id, idempotency_key=key))
        return int(reply.released)

    async def refund(self, reservation_id: str, key: str, *, amount: int = 0, reason: str = "") -> int:
        """Return captured points (all that is left, or `amount`) to the lots they came from."""
        request = points_pb2.RefundRequest(
            reservation_id=reservation_id, amount=amount, reason=reason, idempotency_key=key
        )
        reply = await self._call("Refund", request)
        return int(reply.refunded)

    async def preview_earn(
        self, *, member_id: str, amount_minor: int, currency: str = "JPY", service: str = ""
    ) -> points_pb2.PreviewEarnResponse:
        """What a purchase of `amount_minor` (money paid) at `service` (default: this one) would
        earn the member now, with the explanation to show; nothing is credited."""
        request = points_pb2.PreviewEarnRequest(
            member_id=member_id,
            service=service or self.service,
            purchase=Money(amount_minor=amount_minor, currency=currency),
        )
        reply: points_pb2.PreviewEarnResponse = await self._call("PreviewEarn", request, scope=READ_SCOPE)
        return reply

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


PURCHASE_STAGES: dict[str, Any] = {
    "paid": earning_pb2.PurchasePaid,
    "completed": earning_pb2.PurchaseCompleted,
    "cancelled": earning_pb2.PurchaseCancelled,
    "refunded": earning_pb2.PurchaseRefunded,
}


async def publish_purchase(
    session: AsyncSession,
    service: str,
    stage: str,
    *,
    reference: str,
    member_id: str,
    paid_minor: int,
    currency: str,
    at: datetime,
    points_used: int = 0,
    label: str = "",
    category: str = "",
    merchant_bonus_points: int = 0,
    refund_reference: str = "",
    refunded_minor: int = 0,
) -> str:
    """Stage `<service>.purchase.<stage>` of the earning contract in the session's transaction
    (outbox); returns the event id. `paid_minor` is the money paid, without the points used.
    A refund names its own `refund_reference` and the money it returned."""
    purchase = earning_pb2.Purchase(
        reference=reference,
        member_id=member_id,
        paid=Money(amount_minor=paid_minor, currency=currency),
        points_used=points_used,
        label=label,
        category=category,
        merchant_bonus_points=merchant_bonus_points,
    )
    fields: dict[str, Any] = {"purchase": purchase, "occurred_at": timestamp(at)}
    if stage == "refunded":
        fields.update(refund_reference=refund_reference, refunded=Money(amount_minor=refunded_minor, currency=currency))
    message = PURCHASE_STAGES[stage](**fields)
    return await publish(session, f"{service}.purchase.{stage}", message, member_id=member_id)
