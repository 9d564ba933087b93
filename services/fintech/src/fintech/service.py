"""The fintech service: card payments for the ecosystem (gRPC PaymentsService), the card, bank
and securities for members (REST + pages), partner merchants (REST), events through the outbox."""

from typing import Any

from fastapi import APIRouter
from kizuna.fintech.v1 import fintech_pb2_grpc
from kizuna.kit import oidc_client, web
from kizuna.kit.service import Runtime, Service

from fintech import grpc_api, http_api, pages, securities, statements
from fintech.points_client import points_client
from fintech.settings import Settings


async def close_points_channel(runtime: Runtime[Any]) -> None:
    await points_client(runtime).close()


PAGE_SCOPES = "openid profile offline_access points:read points:spend fintech:read fintech:pay"

router = APIRouter()
for part in (http_api.router, pages.router, oidc_client.router, web.router):
    router.include_router(part)

service = Service(
    name="fintech",
    settings=Settings,
    http=router,
    grpc=[(fintech_pb2_grpc.add_PaymentsServiceServicer_to_server, grpc_api.PaymentsApi)],
    jobs=[statements.statement_job],
    on_start=[securities.seed_funds, oidc_client.web_sign_in(scopes=PAGE_SCOPES)],
    on_stop=[close_points_channel],
)
