"""Paying for a booking: points (the kit's PointsClient) and card (the kit's PaymentsClient).

Each step's idempotency key is derived from the booking ID, so every call may be retried. Peer
refusals become `PaymentError` with a reason the member can read and the peer's status; anything
else (a bug) propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
from kizuna.kit.auth import ServiceTokenClient
from kizuna.kit.errors import DomainError
from kizuna.kit.payments import CardAuthorization, PaymentsClient
from kizuna.kit.points import PointsClient

T = TypeVar("T")


class PaymentError(Exception):
    """A payment step did not go through; `reason` is shown to the member."""

    def __init__(self, reason: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


async def _step(call: Awaitable[T]) -> T:
    try:
        return await call
    except DomainError as exc:
        raise PaymentError(exc.message, exc.grpc_status) from exc


class PaymentGateway:
    def __init__(self, points_addr: str, fintech_addr: str, tokens: ServiceTokenClient | None, timeout: float) -> None:
        self.points = PointsClient(points_addr, tokens, service="travel", timeout=timeout)
        self.cards = PaymentsClient(fintech_addr, tokens, service="travel", timeout=timeout)

    async def close(self) -> None:
        await self.points.close()
        await self.cards.close()

    # ---- points -----------------------------------------------------------------------------
    async def reserve_points(
        self, *, member_id: str, amount: int, booking_id: str, reason: str, ttl_seconds: int, member_token: str
    ) -> str:
        return await _step(
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
        await _step(self.points.capture(reservation_id, f"{booking_id}:points-capture"))

    async def void_points(self, *, reservation_id: str, booking_id: str) -> None:
        await _step(self.points.void(reservation_id, f"{booking_id}:points-void"))

    async def refund_points(
        self, *, reservation_id: str, amount: int, booking_id: str, purpose: str, reason: str
    ) -> int:
        key = f"{booking_id}:points-refund-{purpose}"
        return await _step(self.points.refund(reservation_id, key, amount=amount, reason=reason))

    # ---- card -------------------------------------------------------------------------------
    async def authorize_card(
        self, *, member_id: str, amount_minor: int, currency: str, booking_id: str, member_token: str
    ) -> CardAuthorization:
        """Fintech needs the member's own authorization (their token with fintech:pay) to charge their card."""
        return await _step(
            self.cards.authorize(
                member_id=member_id,
                amount_minor=amount_minor,
                currency=currency,
                member_token=member_token,
                key=f"{booking_id}:card-authorize",
            )
        )

    async def capture_card(self, *, authorization_id: str, booking_id: str) -> str:
        return await _step(self.cards.capture(authorization_id, f"{booking_id}:card-capture"))

    async def void_card(self, *, authorization_id: str, booking_id: str) -> None:
        await _step(self.cards.void(authorization_id, f"{booking_id}:card-void"))

    async def refund_card(
        self, *, authorization_id: str, amount_minor: int, currency: str, booking_id: str, purpose: str
    ) -> None:
        key = f"{booking_id}:card-refund-{purpose}"
        await _step(self.cards.refund(authorization_id, key, amount_minor=amount_minor, currency=currency))
