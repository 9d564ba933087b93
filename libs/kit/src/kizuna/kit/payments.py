"""Taking a card payment from any service: fintech's PaymentsService over gRPC.

Every call carries this service's token (client credentials, scope `fintech:pay`); `authorize`
also carries the member's own token, because only the member can let a service charge their card.
Each call takes the caller's idempotency key, so a saga may retry any step. A decline is an answer,
not an error (`CardAuthorization.approved` is False, with the reason); refusals from fintech become
the kit's domain errors (`peer_error`), with the peer named.

    payments = PaymentsClient(settings.fintech_addr, runtime.service_tokens, service="shop",
                              merchant_name="KIZUNA SHOP")
    auth = await payments.authorize(member_id=m, amount_minor=1200, currency="JPY", member_token=t,
                                    key="o1:authorize")
    if auth.approved:
        capture_id = await payments.capture(auth.authorization_id, key="o1:capture")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from kizuna.common.v1 import common_pb2
from kizuna.fintech.v1 import fintech_pb2, fintech_pb2_grpc
from kizuna.kit.auth import ServiceTokenClient, call_metadata
from kizuna.kit.errors import InvalidArgument, Unavailable
from kizuna.kit.rpc import client_channel, peer_error

PAY_SCOPE = "fintech:pay"


@dataclass(frozen=True)
class CardAuthorization:
    """Fintech's answer to an authorization: approved, or declined with a reason (its enum name)."""

    authorization_id: str
    approved: bool
    decline_reason: str


class PaymentsClient:
    """This service's side of fintech's PaymentsService (authorize, capture, void, refund)."""

    def __init__(
        self,
        address: str,
        tokens: ServiceTokenClient | None,
        *,
        service: str,
        merchant_id: str | None = None,
        merchant_name: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.service = service
        # On the member's statement: this service, unless a call names a seller (a marketplace).
        self.merchant = fintech_pb2.Merchant(
            merchant_id=merchant_id or f"kizuna-{service}", name=merchant_name or f"KIZUNA {service.upper()}"
        )
        self.timeout = timeout
        self._tokens = tokens
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> fintech_pb2_grpc.PaymentsServiceStub:
        # Opened on first use, inside the running loop.
        if self._channel is None:
            self._channel = client_channel(self.address, retry_services=["kizuna.fintech.v1.PaymentsService"])
        return fintech_pb2_grpc.PaymentsServiceStub(self._channel)

    async def _call(self, method: str, request: Any, member_token: str | None = None) -> Any:
        if self._tokens is None:
            raise Unavailable(f"{self.service} has no client secret (KIZUNA_CLIENT_SECRET) to call fintech")
        metadata = call_metadata(await self._tokens.token(PAY_SCOPE), member_token)
        try:
            return await getattr(self._stub(), method)(request, metadata=metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise peer_error("fintech", exc) from exc

    async def authorize(
        self,
        *,
        member_id: str,
        amount_minor: int,
        currency: str,
        member_token: str,
        key: str,
        merchant_id: str = "",
        merchant_name: str = "",
    ) -> CardAuthorization:
        """Hold `amount_minor` on the member's card; the member's token (fintech:pay) is their consent.
        The merchant on the statement is this service unless a seller is named."""
        merchant = self.merchant
        if merchant_id:
            merchant = fintech_pb2.Merchant(merchant_id=merchant_id, name=merchant_name or merchant_id)
        request = fintech_pb2.AuthorizeRequest(
            member_id=member_id,
            amount=common_pb2.Money(amount_minor=amount_minor, currency=currency),
            merchant=merchant,
            idempotency_key=key,
        )
        reply = await self._call("Authorize", request, member_token)
        approved = reply.status == fintech_pb2.AUTHORIZATION_STATUS_APPROVED
        reason = "" if approved else fintech_pb2.DeclineReason.Name(reply.decline_reason)
        return CardAuthorization(str(reply.authorization_id), approved, reason)

    async def capture(self, authorization_id: str, key: str, *, amount_minor: int = 0, currency: str = "") -> str:
        """Charge the authorization (all of it, or `amount_minor`; the rest is released); returns the capture id."""
        request = fintech_pb2.CaptureRequest(authorization_id=authorization_id, idempotency_key=key)
        if amount_minor:
            request.amount.CopyFrom(_money(amount_minor, currency))
        reply = await self._call("Capture", request)
        return str(reply.capture_id)

    async def void(self, authorization_id: str, key: str) -> int:
        """Release an authorization that will not be captured; returns the minor units released."""
        request = fintech_pb2.VoidRequest(authorization_id=authorization_id, idempotency_key=key)
        reply = await self._call("Void", request)
        return int(reply.released.amount_minor)

    async def refund(self, authorization_id: str, key: str, *, amount_minor: int = 0, currency: str = "") -> int:
        """Return a captured charge (all that is left, or `amount_minor`); returns the minor units refunded."""
        request = fintech_pb2.RefundRequest(authorization_id=authorization_id, idempotency_key=key)
        if amount_minor:
            request.amount.CopyFrom(_money(amount_minor, currency))
        reply = await self._call("Refund", request)
        return int(reply.refunded.amount_minor)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _money(amount_minor: int, currency: str) -> common_pb2.Money:
    if not currency:
        raise InvalidArgument("a partial amount needs its currency")
    return common_pb2.Money(amount_minor=amount_minor, currency=currency)
