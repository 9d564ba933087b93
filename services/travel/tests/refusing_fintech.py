"""A stand-in for fintech's PaymentsService, kept for one failure the real fintech cannot be made
to produce on demand: refusing to capture an authorization it has just approved (an authorization
that expired between Authorize and Capture). Everything else travel's tests pay through the real
fintech. It serves the generated interface on a real gRPC server behind the kit's token checks, and
enforces what the contract asks of travel: its own fintech:pay token, the member's own token to
authorize, idempotency keys."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from kizuna.common.v1 import common_pb2
from kizuna.fintech.v1 import fintech_pb2 as fpb
from kizuna.fintech.v1 import fintech_pb2_grpc
from kizuna.kit.auth import TokenVerifier, current_call
from kizuna.kit.errors import FailedPrecondition, NotFound
from kizuna.kit.rpc import GrpcServer

_ids = itertools.count(1)


@dataclass
class RefusingFintech(fintech_pb2_grpc.PaymentsServiceServicer):
    """Approves every authorization; `refuse_capture` makes Capture refuse with that reason."""

    refuse_capture: str = ""
    status: dict[str, str] = field(default_factory=dict)  # authorization ID -> approved | captured | voided
    by_key: dict[str, Any] = field(default_factory=dict)

    def _enter(self) -> None:
        current_call().require_service_scope("fintech:pay")

    async def Authorize(self, request: fpb.AuthorizeRequest, context: Any) -> fpb.AuthorizeResponse:
        self._enter()
        current_call().require_member(request.member_id, "fintech:pay")
        if request.idempotency_key not in self.by_key:
            aid = f"auth_{next(_ids)}"
            self.status[aid] = "approved"
            self.by_key[request.idempotency_key] = fpb.AuthorizeResponse(
                authorization_id=aid, status=fpb.AUTHORIZATION_STATUS_APPROVED
            )
        response: fpb.AuthorizeResponse = self.by_key[request.idempotency_key]
        return response

    async def Capture(self, request: fpb.CaptureRequest, context: Any) -> fpb.CaptureResponse:
        self._enter()
        if self.refuse_capture:
            raise FailedPrecondition(self.refuse_capture)
        if self.status.get(request.authorization_id) != "approved":
            raise NotFound("unknown authorization")
        self.status[request.authorization_id] = "captured"
        return fpb.CaptureResponse(capture_id=f"cap_{request.authorization_id}")

    async def Void(self, request: fpb.VoidRequest, context: Any) -> fpb.VoidResponse:
        self._enter()
        if request.authorization_id not in self.status:
            raise NotFound("unknown authorization")
        if self.status[request.authorization_id] == "captured":
            raise FailedPrecondition("authorization was captured; refund it")
        self.status[request.authorization_id] = "voided"
        return fpb.VoidResponse(released=common_pb2.Money(amount_minor=0, currency="JPY"))

    async def Refund(self, request: fpb.RefundRequest, context: Any) -> fpb.RefundResponse:
        self._enter()
        raise FailedPrecondition("nothing captured to refund")


async def serve_refusing_fintech(issuer: str, fintech: RefusingFintech) -> tuple[GrpcServer, str]:
    server = GrpcServer(
        [(fintech_pb2_grpc.add_PaymentsServiceServicer_to_server, fintech)], verifier=TokenVerifier(issuer)
    )
    port = server.bind("127.0.0.1", 0)
    await server.start()
    return server, f"127.0.0.1:{port}"
