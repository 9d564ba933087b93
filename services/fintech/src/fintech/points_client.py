"""The points service as fintech uses it: reserve a member's points (with the member's token),
capture or void the reservation. Every call carries an idempotency key derived from fintech's
payment ID, so a retried payment step never spends twice."""

from __future__ import annotations

from typing import Any

import grpc
from kizuna.kit.auth import call_metadata
from kizuna.kit.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from kizuna.kit.rpc import client_channel
from kizuna.kit.service import Runtime
from kizuna.points.v1 import points_pb2, points_pb2_grpc

SPEND_SCOPE = "points:spend"
TIMEOUT = 10.0


class PointsClient:
    def __init__(self, runtime: Runtime[Any]) -> None:
        self.runtime = runtime
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> points_pb2_grpc.PointsServiceStub:
        if self._channel is None:
            self._channel = client_channel(
                self.runtime.settings.points_addr, retry_services=["kizuna.points.v1.PointsService"]
            )
        return points_pb2_grpc.PointsServiceStub(self._channel)

    async def _metadata(self, member_token: str | None = None) -> Any:
        if self.runtime.service_tokens is None:
            raise Unavailable("fintech has no client secret (KIZUNA_CLIENT_SECRET) to call the points service")
        return call_metadata(await self.runtime.service_tokens.token(SPEND_SCOPE), member_token)

    async def reserve(self, *, member_id: str, member_token: str, points: int, reason: str, ref: str, key: str) -> str:
        """Hold the member's points; returns the reservation ID. Refusals become domain errors."""
        try:
            response = await self._stub().Reserve(
                points_pb2.ReserveRequest(
                    member_id=member_id,
                    amount=points,
                    reason=reason,
                    source_service="fintech",
                    source_ref=ref,
                    idempotency_key=key,
                ),
                metadata=await self._metadata(member_token),
                timeout=TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc) from exc
        return response.reservation_id

    async def capture(self, reservation_id: str, key: str) -> int:
        try:
            response = await self._stub().Capture(
                points_pb2.CaptureRequest(reservation_id=reservation_id, idempotency_key=key),
                metadata=await self._metadata(),
                timeout=TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc) from exc
        return response.captured

    async def void(self, reservation_id: str, key: str) -> int:
        try:
            response = await self._stub().Void(
                points_pb2.VoidRequest(reservation_id=reservation_id, idempotency_key=key),
                metadata=await self._metadata(),
                timeout=TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc) from exc
        return response.released

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _domain_error(exc: grpc.aio.AioRpcError) -> Exception:
    detail = f"points service: {exc.details()}"
    code = exc.code()
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(detail)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDenied(detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return FailedPrecondition(detail)
    return Unavailable(detail)


def points_client(runtime: Runtime[Any]) -> PointsClient:
    client = runtime.state.get("points_client")
    if client is None:
        client = runtime.state["points_client"] = PointsClient(runtime)
    return client  # type: ignore[no-any-return]
