"""The shop's context: its parts built once at start (peer clients, saga, lifecycle, earn previews), on the
runtime's clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from kizuna.kit.clock import Clock, LiveClock
from kizuna.kit.earn_preview import EarnPreviews
from kizuna.kit.payments import PaymentsClient
from kizuna.kit.points import PointsClient
from kizuna.kit.service import Runtime, context_of

from shop.checkout import CheckoutSaga
from shop.orders import OrderLifecycle
from shop.settings import Settings


@dataclass
class Shop:
    runtime: Runtime[Settings]
    clock: Clock
    points: PointsClient
    payments: PaymentsClient
    checkout: CheckoutSaga
    orders: OrderLifecycle
    earn: EarnPreviews

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    async def aclose(self) -> None:
        await self.points.close()
        await self.payments.close()


def shop_context(runtime: Runtime[Any]) -> Shop:
    """`Service(context=...)`: built once at start."""
    s: Settings = runtime.settings
    # Read at every call: a test may swap `runtime.clock` (deadlines, auto-completion, stuck transitions).
    clock = LiveClock(lambda: runtime.clock)
    tokens, timeout = runtime.service_tokens, s.peer_timeout_seconds
    points = PointsClient(s.points_addr, tokens, service="shop", timeout=timeout)
    payments = PaymentsClient(s.fintech_addr, tokens, service="shop", timeout=timeout)
    return Shop(
        runtime,
        clock,
        points,
        payments,
        CheckoutSaga(runtime.db, points, payments, s, clock),
        OrderLifecycle(runtime.db, points, payments, s, clock),
        EarnPreviews.of(points, s),
    )


def shop_of(runtime: Runtime[Any]) -> Shop:
    """The running shop's context."""
    return runtime.context_as(Shop)


ShopDep = Annotated[Shop, Depends(context_of(Shop))]
