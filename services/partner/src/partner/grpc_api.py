"""The till's API over gRPC (kizuna.partner.v1.PosService), thin: authenticate the partner from
its own credentials, call the till, translate. The kit's token check does not apply to it (the
service declares it `grpc_own_auth`): tills are not Kizuna clients."""

from __future__ import annotations

from typing import Any

import grpc
from kizuna.kit.errors import InvalidArgument
from kizuna.kit.service import Runtime
from kizuna.partner.v1 import partner_pb2, partner_pb2_grpc

from partner import partners
from partner.context import Context
from partner.models import Partner, Sale

SERVICE_NAME = "kizuna.partner.v1.PosService"


def _sale(sale: Sale) -> partner_pb2.Sale:
    return partner_pb2.Sale(
        sale_id=sale.id,
        kind=sale.kind,
        amount_minor=sale.amount_minor,
        points=sale.points,
        status=sale.status,
        returned_minor=sale.returned_minor,
        returned_points=sale.returned_points,
    )


class PosApi(partner_pb2_grpc.PosServiceServicer):
    def __init__(self, runtime: Runtime[Any]) -> None:
        self.runtime = runtime

    @property
    def context(self) -> Context:
        return self.runtime.context_as(Context)

    async def _partner(self, context: grpc.aio.ServicerContext) -> Partner:
        """The partner whose till calls: `authorization: Basic …` metadata, read as REST reads the header."""
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization", "")
        async with self.context.db.sessions() as session:
            return await partners.authenticate_basic(session, authorization if isinstance(authorization, str) else "")

    async def Earn(
        self, request: partner_pb2.EarnRequest, context: grpc.aio.ServicerContext
    ) -> partner_pb2.EarnResponse:
        partner = await self._partner(context)
        if not request.HasField("amount"):
            raise InvalidArgument("amount is required")
        sale = await self.context.till.earn(
            partner,
            store_id=request.till.store_id,
            terminal=request.till.terminal,
            receipt=request.idempotency_key,
            scanned=request.code,
            amount_minor=request.amount.amount_minor,
            currency=request.amount.currency or "JPY",
        )
        return partner_pb2.EarnResponse(sale=_sale(sale))

    async def Spend(
        self, request: partner_pb2.SpendRequest, context: grpc.aio.ServicerContext
    ) -> partner_pb2.SpendResponse:
        partner = await self._partner(context)
        sale = await self.context.till.spend(
            partner,
            store_id=request.till.store_id,
            terminal=request.till.terminal,
            receipt=request.idempotency_key,
            scanned=request.code,
            points=request.points,
        )
        return partner_pb2.SpendResponse(sale=_sale(sale))

    async def TakeReturn(
        self, request: partner_pb2.TakeReturnRequest, context: grpc.aio.ServicerContext
    ) -> partner_pb2.TakeReturnResponse:
        partner = await self._partner(context)
        done = await self.context.till.take_return(
            partner,
            store_id=request.till.store_id,
            terminal=request.till.terminal,
            receipt=request.receipt,
            return_receipt=request.idempotency_key,
            amount_minor=request.amount_minor,
            points=request.points,
        )
        return partner_pb2.TakeReturnResponse(return_ids=[r.id for r in done])
