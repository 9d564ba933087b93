"""The shop's card peer: fintech's PaymentsService (points is the kit's PointsClient).

Every call carries the shop's service token (client credentials); Authorize also carries the
member's own token, because only the member can let the shop charge their card. gRPC failures
become the kit's domain errors with the peer named, so the caller sees why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from kizuna.common.v1 import common_pb2
from kizuna.fintech.v1 import fintech_pb2, fintech_pb2_grpc
from kizuna.kit.auth import ServiceTokenClient, call_metadata
from kizuna.kit.errors import Unavailable
from kizuna.kit.rpc import client_channel, peer_error

FINTECH_SCOPE = "fintech:pay"

R = TypeVar("R")


async def _call(peer: str, call: Callable[[], Awaitable[R]]) -> R:
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        raise peer_error(peer, exc) from exc


@dataclass(frozen=True)
class Authorization:
    authorization_id: str
    approved: bool
    decline_reason: str


class PaymentsClient:
    """The shop's side of fintech's PaymentsService (card payments)."""

    def __init__(self, address: str, tokens: ServiceTokenClient | None, timeout: float) -> None:
        self._channel = client_channel(address, retry_services=["kizuna.fintech.v1.PaymentsService"])
        self._stub = fintech_pb2_grpc.PaymentsServiceStub(self._channel)
        self._tokens = tokens
        self._timeout = timeout

    async def _metadata(self, member_token: str | None = None) -> Any:
        if self._tokens is None:
            raise Unavailable("the shop has no client secret (KIZUNA_CLIENT_SECRET) to call fintech")
        return call_metadata(await self._tokens.token(FINTECH_SCOPE), member_token)

    async def authorize(
        self,
        *,
        member_id: str,
        amount_minor: int,
        currency: str,
        merchant_id: str,
        merchant_name: str,
        key: str,
        member_token: str,
    ) -> Authorization:
        """Hold the card; fintech needs the member's own token (fintech:pay) as their consent."""
        request = fintech_pb2.AuthorizeRequest(
            member_id=member_id,
            amount=common_pb2.Money(amount_minor=amount_minor, currency=currency),
            merchant=fintech_pb2.Merchant(merchant_id=merchant_id, name=merchant_name),
            idempotency_key=key,
        )
        md = await self._metadata(member_token)
        response = await _call("fintech", lambda: self._stub.Authorize(request, metadata=md, timeout=self._timeout))
        approved = response.status == fintech_pb2.AUTHORIZATION_STATUS_APPROVED
        reason = "" if approved else fintech_pb2.DeclineReason.Name(response.decline_reason)
        return Authorization(str(response.authorization_id), approved, reason)

    async def capture(self, authorization_id: str, key: str) -> str:
        request = fintech_pb2.CaptureRequest(authorization_id=authorization_id, idempotency_key=key)
        md = await self._metadata()
        response = await _call("fintech", lambda: self._stub.Capture(request, metadata=md, timeout=self._timeout))
        return str(response.capture_id)

    async def void(self, authorization_id: str, key: str) -> None:
        request = fintech_pb2.VoidRequest(authorization_id=authorization_id, idempotency_key=key)
        md = await self._metadata()
        await _call("fintech", lambda: self._stub.Void(request, metadata=md, timeout=self._timeout))

    async def refund(self, authorization_id: str, key: str) -> int:
        request = fintech_pb2.RefundRequest(authorization_id=authorization_id, idempotency_key=key)
        md = await self._metadata()
        response = await _call("fintech", lambda: self._stub.Refund(request, metadata=md, timeout=self._timeout))
        return int(response.refunded.amount_minor)

    async def close(self) -> None:
        await self._channel.close()
