"""Background jobs: finish or compensate stuck checkouts; finish orders stuck mid-transition; cancel
paid orders past their ship-by deadline; complete orders delivered N days ago."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kizuna.kit.service import Runtime

from shop.wiring import shop_of

log = logging.getLogger("shop.jobs")


async def housekeeping(runtime: Runtime[Any]) -> None:
    shop = shop_of(runtime)
    while not runtime.stopping:
        try:
            recovered = await shop.checkout.recover_stuck()
            finished = await shop.orders.recover_stuck()
            overdue = await shop.orders.cancel_unshipped()
            completed = await shop.orders.auto_complete()
            if recovered or finished or overdue or completed:
                log.info(
                    "housekeeping",
                    extra={
                        "checkouts_recovered": recovered,
                        "orders_recovered": finished,
                        "overdue_orders_cancelled": overdue,
                        "orders_completed": completed,
                    },
                )
        except Exception:
            log.exception("housekeeping failed; retrying next round")
        await asyncio.sleep(runtime.settings.jobs_interval_seconds)
