"""The shop's parts built once per running service (clock, peer clients, saga, lifecycle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kizuna.kit.clock import Clock
from kizuna.kit.payments import PaymentsClient
from kizuna.kit.points import PointsClient
from kizuna.kit.service import Runtime

from shop.checkout import CheckoutSaga
from shop.clock import RuntimeClock
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

    @property
    def settings(self) -> Settings:
        return self.runtime.settings


def shop_of(runtime: Runtime[Any]) -> Shop:
    if "shop" not in runtime.state:
        s: Settings = runtime.settings
        clock = RuntimeClock(runtime)
        tokens, timeout = runtime.service_tokens, s.peer_timeout_seconds
        points = PointsClient(s.points_addr, tokens, service="shop", timeout=timeout)
        payments = PaymentsClient(s.fintech_addr, tokens, service="shop", timeout=timeout)
        runtime.state["shop"] = Shop(
            runtime,
            clock,
            points,
            payments,
            CheckoutSaga(runtime.db, points, payments, s, clock),
            OrderLifecycle(runtime.db, points, payments, s, clock),
        )
    shop: Shop = runtime.state["shop"]
    return shop


async def close(runtime: Runtime[Any]) -> None:
    shop: Shop | None = runtime.state.get("shop")
    if shop is not None:
        await shop.points.close()
        await shop.payments.close()
