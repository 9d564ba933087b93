"""The fintech service: card payments for the ecosystem (gRPC PaymentsService), the card, bank
and securities for members (REST + pages), partner merchants (REST), events through the outbox."""

from kizuna.fintech.v1 import fintech_pb2_grpc
from kizuna.kit.service import Service

from fintech import grpc_api, http_api
from fintech.settings import Settings

service = Service(
    name="fintech",
    settings=Settings,
    http=http_api.router,
    grpc=[(fintech_pb2_grpc.add_PaymentsServiceServicer_to_server, grpc_api.PaymentsApi)],
)
