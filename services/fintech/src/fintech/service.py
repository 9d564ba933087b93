"""The fintech service: card payments for the ecosystem (gRPC PaymentsService), the card, bank
and securities for members (REST + pages), partner merchants (REST), events through the outbox."""

from typing import Any

from fastapi import APIRouter
from kizuna.fintech.v1 import fintech_pb2_grpc
from kizuna.kit.privacy import Privacy
from kizuna.kit.service import Runtime, Service

from fintech import bank, grpc_api, http_api, member_data, pages, securities, statements, sweeper
from fintech.card_keys import load_card_token_key
from fintech.points_client import points_client
from fintech.settings import Settings


async def close_points_channel(runtime: Runtime[Any]) -> None:
    await points_client(runtime).close()


PAGE_SCOPES = "openid profile offline_access points:read points:spend fintech:read fintech:pay"

router = APIRouter()
for part in (http_api.router, pages.router):
    router.include_router(part)

service = Service(
    name="fintech",
    settings=Settings,
    http=router,
    grpc=[(fintech_pb2_grpc.add_PaymentsServiceServicer_to_server, grpc_api.PaymentsApi)],
    consumers=bank.consumers,
    jobs=[statements.statement_job, sweeper.sweeper_job],
    on_start=[load_card_token_key, securities.seed_funds],
    on_stop=[close_points_channel],
    web_sign_in_scopes=PAGE_SCOPES,
    privacy=Privacy(export=member_data.export, erase=member_data.erase),
)
