"""Test peers: small but real PointsService and PaymentsService servers (the generated servicer
interfaces on real gRPC servers, behind the kit's real token checks), with in-memory books that
tests read to prove that nothing was lost. Used until / besides the real points and fintech
services; the tests that use the real services are in test_real_peers.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from kizuna.common.v1 import common_pb2
from kizuna.fintech.v1 import fintech_pb2 as fpb
from kizuna.fintech.v1 import fintech_pb2_grpc
from kizuna.kit.auth import AuthInterceptor, TokenVerifier, current_call
from kizuna.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kizuna.kit.rpc import GrpcServer
from kizuna.points.v1 import points_pb2 as ppb
from kizuna.points.v1 import points_pb2_grpc

_ids = itertools.count(1)


class _Idempotent:
    """Same key + same request -> the first response; same key + other request -> ALREADY_EXISTS."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[bytes, Any]] = {}

    def replay(self, key: str, request: Any) -> Any | None:
        if key in self.seen:
            first, response = self.seen[key]
            if first != request.SerializeToString(deterministic=True):
                raise AlreadyExists(f"idempotency key {key!r} reused with another request")
            return response
        return None

    def remember(self, key: str, request: Any, response: Any) -> Any:
        self.seen[key] = (request.SerializeToString(deterministic=True), response)
        return response


@dataclass
class Reservation:
    member_id: str
    amount: int
    status: str = "reserved"  # reserved | captured | voided
    refunded: int = 0


@dataclass
class PointsPeer(points_pb2_grpc.PointsServiceServicer):
    balances: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    fail_next: dict[str, Exception] = field(default_factory=dict)  # RPC name -> error to raise once
    calls: list[str] = field(default_factory=list)
    keys: _Idempotent = field(default_factory=_Idempotent)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        current_call().require_service_scope("points:spend", "points:credit")
        if name in self.fail_next:
            raise self.fail_next.pop(name)

    def held(self, member_id: str) -> int:
        return sum(r.amount for r in self.reservations.values() if r.member_id == member_id and r.status == "reserved")

    def spent(self, member_id: str) -> int:
        return sum(
            r.amount - r.refunded
            for r in self.reservations.values()
            if r.member_id == member_id and r.status == "captured"
        )

    async def GetBalance(self, request: ppb.GetBalanceRequest, context: Any) -> ppb.GetBalanceResponse:
        return ppb.GetBalanceResponse(
            total=self.balances.get(request.member_id, 0), pending=self.held(request.member_id)
        )

    async def Reserve(self, request: ppb.ReserveRequest, context: Any) -> ppb.ReserveResponse:
        self._enter("Reserve")
        current_call().require_member(request.member_id, "points:spend")
        if (first := self.keys.replay(request.idempotency_key, request)) is not None:
            return first
        if request.amount <= 0:
            raise InvalidArgument("amount must be > 0")
        if self.balances.get(request.member_id, 0) < request.amount:
            raise FailedPrecondition("not enough points")
        self.balances[request.member_id] -= request.amount
        rid = f"rsv_{next(_ids)}"
        self.reservations[rid] = Reservation(request.member_id, request.amount)
        return self.keys.remember(
            request.idempotency_key,
            request,
            ppb.ReserveResponse(reservation_id=rid, balance_after=self.balances[request.member_id]),
        )

    async def Capture(self, request: ppb.CaptureRequest, context: Any) -> ppb.CaptureResponse:
        self._enter("Capture")
        if (first := self.keys.replay(request.idempotency_key, request)) is not None:
            return first
        r = self.reservations.get(request.reservation_id)
        if r is None:
            raise NotFound("unknown reservation")
        if r.status != "reserved":
            raise FailedPrecondition(f"reservation is {r.status}")
        r.status = "captured"
        return self.keys.remember(
            request.idempotency_key,
            request,
            ppb.CaptureResponse(captured=r.amount, entry_id=f"ent_{request.reservation_id}"),
        )

    async def Void(self, request: ppb.VoidRequest, context: Any) -> ppb.VoidResponse:
        self._enter("Void")
        if (first := self.keys.replay(request.idempotency_key, request)) is not None:
            return first
        r = self.reservations.get(request.reservation_id)
        if r is None:
            raise NotFound("unknown reservation")
        if r.status == "captured":
            raise FailedPrecondition("reservation was captured; refund it")
        released = r.amount if r.status == "reserved" else 0
        r.status = "voided"
        self.balances[r.member_id] += released
        return self.keys.remember(request.idempotency_key, request, ppb.VoidResponse(released=released))

    async def Refund(self, request: ppb.RefundRequest, context: Any) -> ppb.RefundResponse:
        self._enter("Refund")
        if (first := self.keys.replay(request.idempotency_key, request)) is not None:
            return first
        r = self.reservations.get(request.reservation_id)
        if r is None or r.status != "captured":
            raise FailedPrecondition("nothing captured to refund")
        amount = request.amount or (r.amount - r.refunded)
        if amount > r.amount - r.refunded:
            raise FailedPrecondition("refund exceeds what is left")
        r.refunded += amount
        self.balances[r.member_id] += amount
        return self.keys.remember(request.idempotency_key, request, ppb.RefundResponse(refunded=amount))


@dataclass
class Authorization:
    member_id: str
    amount: int
    status: str  # approved | declined | captured | voided
    refunded: int = 0


@dataclass
class CardPeer(fintech_pb2_grpc.PaymentsServiceServicer):
    available: dict[str, int] = field(default_factory=dict)  # members with a card -> available credit
    authorizations: dict[str, Authorization] = field(default_factory=dict)
    fail_next: dict[str, Exception] = field(default_factory=dict)  # RPC name -> error to raise once
    calls: list[str] = field(default_factory=list)
    keys: _Idempotent = field(default_factory=_Idempotent)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        current_call().require_service_scope("fintech:pay")
        if name in self.fail_next:
            raise self.fail_next.pop(name)

    def charged(self, member_id: str) -> int:
        """Money taken from the member's card and not returned."""
        return sum(
            a.amount - a.refunded
            for a in self.authorizations.values()
            if a.member_id == member_id and a.status == "captured"
        )

    def open_holds(self, member_id: str) -> int:
        return sum(
            a.amount for a in self.authorizations.values() if a.member_id == member_id and a.status == "approved"
        )

    async def Authorize(self, request: fpb.AuthorizeRequest, context: Any) -> fpb.AuthorizeResponse:
        self._enter("Authorize")
        current_call().require_member(request.member_id, "fintech:pay")
        if (first := self.keys.replay(request.idempotency_key, request)) is not None:
            return first
        if request.member_id not in self.available:
            raise NotFound("the member has no card")
        amount = request.amount.amount_minor
        aid = f"auth_{next(_ids)}"
        if amount > self.available[request.member_id]:
            self.authorizations[aid] = Authorization(request.member_id, amount, "declined")
            response = fpb.AuthorizeResponse(
                authorization_id=aid, status=fpb.AUTHORIZATION_STATUS_DECLINED, decline_reason=fpb.DECLINE_REASON_LIMIT
            )
        else:
            self.available[request.member_id] -= amount
            self.authorizations[aid] = Authorization(request.member_id, amount, "approved")
            response = fpb.AuthorizeResponse(authorization_id=aid, status=fpb.AUTHORIZATION_STATUS_APPROVED)
        return self.keys.remember(request.idempotency_key, request, response)

    async def Capture(self, request: fpb.CaptureRequest, context: Any) -> fpb.CaptureResponse:
        self._enter("Capture")
        if (first := self.keys.replay(request.idempotency_key, request)) is not None:
            return first
        a = self.authorizations.get(request.authorization_id)
        if a is None:
            raise NotFound("unknown authorization")
        if a.status != "approved":
            raise FailedPrecondition(f"authorization is {a.status}")
        a.status = "captured"
        return self.keys.remember(
            request.idempotency_key,
            request,
            fpb.CaptureResponse(
                capture_id=f"cap_{request.authorization_id}",
                captured=common_pb2.Money(amount_minor=a.amount, currency="JPY"),
            ),
        )

    async def Void(self, request: fpb.VoidRequest, context: Any) -> fpb.VoidResponse:
        self._enter("Void")
        if (first := self.keys.replay(request.idempotency_key, request)) is not None:
            return first
        a = self.authorizations.get(request.authorization_id)
        if a is None:
            raise NotFound("unknown authorization")
        if a.status == "captured":
            raise FailedPrecondition("authorization was captured; refund it")
        released = a.amount if a.status == "approved" else 0
        if a.status == "approved":
            a.status = "voided"
            self.available[a.member_id] += released
        return self.keys.remember(
            request.idempotency_key,
            request,
            fpb.VoidResponse(released=common_pb2.Money(amount_minor=released, currency="JPY")),
        )

    async def Refund(self, request: fpb.RefundRequest, context: Any) -> fpb.RefundResponse:
        self._enter("Refund")
        if (first := self.keys.replay(request.idempotency_key, request)) is not None:
            return first
        a = self.authorizations.get(request.authorization_id or request.capture_id.removeprefix("cap_"))
        if a is None or a.status != "captured":
            raise FailedPrecondition("nothing captured to refund")
        amount = request.amount.amount_minor if request.HasField("amount") else a.amount - a.refunded
        if amount > a.amount - a.refunded:
            raise FailedPrecondition("refund exceeds what is left")
        a.refunded += amount
        self.available[a.member_id] += amount
        return self.keys.remember(
            request.idempotency_key,
            request,
            fpb.RefundResponse(
                refund_id=f"ref_{next(_ids)}", refunded=common_pb2.Money(amount_minor=amount, currency="JPY")
            ),
        )


async def start_peer_server(issuer: str, points: PointsPeer, cards: CardPeer) -> tuple[GrpcServer, str]:
    """One real gRPC server serving both peers behind the kit's token verification."""
    server = GrpcServer(
        [
            (points_pb2_grpc.add_PointsServiceServicer_to_server, points),
            (fintech_pb2_grpc.add_PaymentsServiceServicer_to_server, cards),
        ],
        ["kizuna.points.v1.PointsService", "kizuna.fintech.v1.PaymentsService"],
        interceptors=[AuthInterceptor(TokenVerifier(issuer))],
    )
    port = server.bind("127.0.0.1", 0)
    await server.start()
    return server, f"127.0.0.1:{port}"
