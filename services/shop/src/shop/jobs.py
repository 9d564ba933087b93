"""Background jobs: finish or compensate stuck checkouts; complete orders delivered N days ago."""

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
            completed = await shop.orders.auto_complete()
            if recovered or completed:
                log.info("housekeeping", extra={"checkouts_recovered": recovered, "orders_completed": completed})
        except Exception:
            log.exception("housekeeping failed; retrying next round")
        await asyncio.sleep(runtime.settings.jobs_interval_seconds)
