"""The fintech service: card payments for the ecosystem (gRPC PaymentsService), the card, bank
and securities for members (REST + pages), partner merchants (REST), events through the outbox."""

import json

from fastapi import APIRouter
from kizuna.fintech.v1 import fintech_pb2_grpc
from kizuna.kit.db import run_in_session
from kizuna.kit.privacy import Privacy
from kizuna.kit.service import Service

from fintech import bank, grpc_api, http_api, ledger, member_data, pages, securities, statements, sweeper
from fintech.context import fintech_context
from fintech.settings import Settings


def audit_command(settings: Settings, _args: list[str]) -> int:
    """`python -m fintech audit`: check the money ledger's invariants; exit 1 if any is broken."""
    report = run_in_session(settings.database_url_for("fintech"), ledger.audit)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1


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
    context=fintech_context,
    on_start=[securities.seed_funds],
    commands={"audit": audit_command},
    web_sign_in_scopes=PAGE_SCOPES,
    privacy=Privacy(export=member_data.export, erase=member_data.erase),
)
