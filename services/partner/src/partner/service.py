"""The partner service: points at stores outside the ecosystem. Partners and their stores, the
member's rotating card code, the till API (earn, spend, returns), settlement, the member's card
page. Its declaration is service.toml."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from kizuna.kit.clock import LiveClock
from kizuna.kit.points import PointsClient
from kizuna.kit.privacy import Privacy
from kizuna.kit.service import Runtime, Service
from kizuna.partner.v1 import partner_pb2_grpc

from partner import cards, grpc_api, http_api, member_data, pages, pos_simulator, settlement
from partner.context import Context
from partner.settings import Settings
from partner.till import Limits, Till

log = logging.getLogger("partner")


def build(runtime: Runtime[Any]) -> Context:
    """The kit builds this at start and closes it at stop; routes read it typed (ContextDep)."""
    s: Settings = runtime.settings
    points = PointsClient(s.points_addr, runtime.service_tokens, service="partner", timeout=s.peer_timeout_seconds)
    grants = cards.Grants(
        s.kizuna_issuer, s.kizuna_client_id or "partner", s.kizuna_client_secret, token_endpoint=s.kizuna_token_url
    )
    limits = Limits(
        max_amount_minor=s.max_amount_minor,
        max_points=s.max_points_per_spend,
        per_card_per_minute=s.max_sales_per_card_per_minute,
        per_store_per_minute=s.max_sales_per_store_per_minute,
    )
    clock = LiveClock(lambda: runtime.clock)  # follows runtime.clock, which a test may swap
    return Context(runtime.db, clock, Till(runtime.db, points, grants, clock, limits))


async def grant_job(runtime: Runtime[Any]) -> None:
    """Earnings past their return window are granted (every replica may run it: rows are locked)."""
    while True:
        await asyncio.sleep(runtime.settings.grant_interval_seconds)
        try:
            granted = await runtime.context_as(Context).till.grant_due()
            if granted:
                log.info("granted earnings past their return window", extra={"granted": granted})
        except Exception:
            log.exception("granting earnings failed; will run again")


router = APIRouter()
for part in (http_api.router, pages.router):
    router.include_router(part)

service = Service(
    settings=Settings,
    http=router,
    grpc=[(partner_pb2_grpc.add_PosServiceServicer_to_server, grpc_api.PosApi)],
    # Tills are not Kizuna clients: PosService authenticates the partner's own credentials.
    grpc_own_auth=[grpc_api.SERVICE_NAME],
    context=build,
    jobs=[grant_job],
    consumers=settlement.consumers,
    commands={"pos": pos_simulator.command},
    privacy=Privacy(export=member_data.export, erase=member_data.erase),
)
