"""Test peers: small in-test implementations of the REAL generated PointsService and PaymentsService
interfaces, served on the kit's gRPC server, which checks their callers' tokens.

Checkout journeys run against the REAL points and fintech processes (tests/shop/). These peers
remain only for failure injection the real services cannot be made to produce on demand: the shop's
process killed between a peer's answer and the shop recording it (`after`; see test_checkout.py), a
peer that is away for a while or refuses one call (`down`, `refuse`; see test_order_recovery.py). They enforce what the
contracts say the shop must do: the right scopes, the member's own token for Reserve and
Authorize, idempotency keys, void vs capture states.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from kizuna.common.v1.common_pb2 import Money
from kizuna.fintech.v1 import fintech_pb2 as fpb
from kizuna.fintech.v1 import fintech_pb2_grpc
from kizuna.kit.auth import TokenVerifier, current_call
from kizuna.kit.errors import FailedPrecondition, NotFound
from kizuna.kit.rpc import GrpcServer
from kizuna.points.v1 import points_pb2 as ppb
from kizuna.points.v1 import points_pb2_grpc

_ids = itertools.count(1)
T = TypeVar("T")


async def _gate(peer: Any, method: str, context: Any) -> None:
    """Answer as a peer that is away (UNAVAILABLE) or refuses (FAILED_PRECONDITION) when told to."""
    if method in peer.down:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: the service is away")
    if method in peer.refuse:
        raise FailedPrecondition(f"{method} refused by the test peer")


def _then(peer: Any, method: str) -> None:
    """Run what the test asked to happen once `method` has done its work, before the answer leaves
    (e.g. kill the shop's process, so the answer never reaches it)."""
    action = peer.after.pop(method, None)
    if action is not None:
        action()


@dataclass
class Hold:
    member_id: str
    amount: int
    state: str = "held"  # held | captured | voided
    refunded: int = 0


@dataclass
class PointsPeer(points_pb2_grpc.PointsServiceServicer):
    balances: dict[str, int] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_void: bool = False
    preview_delay: float = 0.0
    previews_in_flight: int = 0
    most_previews_at_once: int = 0
    down: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)
    after: dict[str, Callable[[], None]] = field(default_factory=dict)

    def _once(self, key: str, make: Callable[[], T]) -> T:
        if key not in self.keys:
            self.keys[key] = make()
        answer: T = self.keys[key]
        return answer

    async def GetBalance(self, request: ppb.GetBalanceRequest, context: Any) -> ppb.GetBalanceResponse:
        current_call().require_service_scope("points:read")
        held = sum(h.amount for h in self.holds.values() if h.member_id == request.member_id and h.state == "held")
        return ppb.GetBalanceResponse(total=self.balances.get(request.member_id, 0), pending=held)

    async def Reserve(self, request: ppb.ReserveRequest, context: Any) -> ppb.ReserveResponse:
        auth = current_call()
        auth.require_service_scope("points:spend")
        auth.require_member(request.member_id, "points:spend")
        self.calls.append("Reserve")

        def make() -> ppb.ReserveResponse:
            if self.balances.get(request.member_id, 0) < request.amount:
                raise FailedPrecondition("not enough points")
            self.balances[request.member_id] -= request.amount
            rid = f"rsv_{next(_ids)}"
            self.holds[rid] = Hold(request.member_id, request.amount)
            return ppb.ReserveResponse(reservation_id=rid, balance_after=self.balances[request.member_id])

        answer = self._once(request.idempotency_key, make)
        _then(self, "Reserve")
        return answer

    def _hold(self, rid: str) -> Hold:
        current_call().require_service_scope("points:spend", "points:credit")
        if rid not in self.holds:
            raise NotFound(f"no reservation {rid}")
        return self.holds[rid]

    async def Capture(self, request: ppb.CaptureRequest, context: Any) -> ppb.CaptureResponse:
        hold = self._hold(request.reservation_id)
        self.calls.append("Capture")
        await _gate(self, "Capture", context)

        def make() -> ppb.CaptureResponse:
            if hold.state != "held":
                raise FailedPrecondition(f"reservation is {hold.state}")
            hold.state = "captured"
            return ppb.CaptureResponse(captured=hold.amount, entry_id=f"ent_{next(_ids)}")

        return self._once(request.idempotency_key, make)

    async def Void(self, request: ppb.VoidRequest, context: Any) -> ppb.VoidResponse:
        hold = self._hold(request.reservation_id)
        self.calls.append("Void")
        await _gate(self, "Void", context)
        if self.fail_void:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "points is down")

        def make() -> ppb.VoidResponse:
            if hold.state == "captured":
                raise FailedPrecondition("captured; use Refund")
            released = hold.amount if hold.state == "held" else 0
            hold.state = "voided"
            self.balances[hold.member_id] += released
            return ppb.VoidResponse(released=released)

        return self._once(request.idempotency_key, make)

    async def Refund(self, request: ppb.RefundRequest, context: Any) -> ppb.RefundResponse:
        hold = self._hold(request.reservation_id)
        self.calls.append("Refund")
        await _gate(self, "Refund", context)

        def make() -> ppb.RefundResponse:
            if hold.state != "captured" or hold.refunded == hold.amount:
                raise FailedPrecondition("nothing to refund")
            amount = hold.amount - hold.refunded
            hold.refunded += amount
            self.balances[hold.member_id] += amount
            return ppb.RefundResponse(refunded=amount)

        return self._once(request.idempotency_key, make)

    async def PreviewEarn(self, request: ppb.PreviewEarnRequest, context: Any) -> ppb.PreviewEarnResponse:
        """1% of the purchase, answered after `preview_delay` seconds; counts how many are asked at once."""
        current_call().require_service_scope("points:read")
        self.calls.append("PreviewEarn")
        await _gate(self, "PreviewEarn", context)
        self.previews_in_flight += 1
        self.most_previews_at_once = max(self.most_previews_at_once, self.previews_in_flight)
        try:
            await asyncio.sleep(self.preview_delay)
        finally:
            self.previews_in_flight -= 1
        earned = request.purchase.amount_minor // 100
        return ppb.PreviewEarnResponse(regular=earned, total=earned, rate_bp=100, explanation="1% base")

    def open_holds(self) -> int:
        return sum(1 for h in self.holds.values() if h.state == "held")


@dataclass
class Auth:
    member_id: str
    amount: int
    currency: str
    approved: bool
    state: str = "authorized"  # authorized | captured | voided | declined
    refunded: int = 0


@dataclass
class PaymentsPeer(fintech_pb2_grpc.PaymentsServiceServicer):
    limits: dict[str, int] = field(default_factory=dict)
    auths: dict[str, Auth] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    down: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)
    after: dict[str, Callable[[], None]] = field(default_factory=dict)

    def _once(self, key: str, make: Callable[[], T]) -> T:
        if key not in self.keys:
            self.keys[key] = make()
        answer: T = self.keys[key]
        return answer

    async def Authorize(self, request: fpb.AuthorizeRequest, context: Any) -> fpb.AuthorizeResponse:
        auth = current_call()
        auth.require_service_scope("fintech:pay")
        auth.require_member(request.member_id, "fintech:pay")
        self.calls.append("Authorize")

        def make() -> fpb.AuthorizeResponse:
            if request.member_id not in self.limits:
                raise NotFound("the member has no card")
            aid = f"auth_{next(_ids)}"
            ok = request.amount.amount_minor <= self.limits[request.member_id]
            self.auths[aid] = Auth(
                request.member_id,
                request.amount.amount_minor,
                request.amount.currency,
                ok,
                "authorized" if ok else "declined",
            )
            if ok:
                self.limits[request.member_id] -= request.amount.amount_minor
            return fpb.AuthorizeResponse(
                authorization_id=aid,
                status=fpb.AUTHORIZATION_STATUS_APPROVED if ok else fpb.AUTHORIZATION_STATUS_DECLINED,
                decline_reason=fpb.DECLINE_REASON_UNSPECIFIED if ok else fpb.DECLINE_REASON_LIMIT,
            )

        answer = self._once(request.idempotency_key, make)
        _then(self, "Authorize")
        return answer

    def _auth(self, aid: str) -> Auth:
        current_call().require_service_scope("fintech:pay")
        if aid not in self.auths:
            raise NotFound(f"no authorization {aid}")
        return self.auths[aid]

    async def Capture(self, request: fpb.CaptureRequest, context: Any) -> fpb.CaptureResponse:
        auth = self._auth(request.authorization_id)
        self.calls.append("Capture")
        await _gate(self, "Capture", context)

        def make() -> fpb.CaptureResponse:
            if auth.state != "authorized":
                raise FailedPrecondition(f"authorization is {auth.state}")
            auth.state = "captured"
            return fpb.CaptureResponse(
                capture_id=f"cap_{next(_ids)}", captured=Money(amount_minor=auth.amount, currency=auth.currency)
            )

        return self._once(request.idempotency_key, make)

    async def Void(self, request: fpb.VoidRequest, context: Any) -> fpb.VoidResponse:
        auth = self._auth(request.authorization_id)
        self.calls.append("Void")
        await _gate(self, "Void", context)

        def make() -> fpb.VoidResponse:
            if auth.state == "captured":
                raise FailedPrecondition("captured; use Refund")
            released = auth.amount if auth.state == "authorized" else 0
            if auth.state == "authorized":
                self.limits[auth.member_id] += auth.amount
                auth.state = "voided"
            return fpb.VoidResponse(released=Money(amount_minor=released, currency=auth.currency))

        return self._once(request.idempotency_key, make)

    async def Refund(self, request: fpb.RefundRequest, context: Any) -> fpb.RefundResponse:
        auth = self._auth(request.authorization_id)
        self.calls.append("Refund")
        await _gate(self, "Refund", context)

        def make() -> fpb.RefundResponse:
            if auth.state != "captured" or auth.refunded == auth.amount:
                raise FailedPrecondition("nothing to refund")
            amount = auth.amount - auth.refunded
            auth.refunded += amount
            self.limits[auth.member_id] += amount
            return fpb.RefundResponse(
                refund_id=f"ref_{next(_ids)}", refunded=Money(amount_minor=amount, currency=auth.currency)
            )

        return self._once(request.idempotency_key, make)

    def open_holds(self) -> int:
        return sum(1 for a in self.auths.values() if a.state == "authorized")


async def serve(servicer: Any, add: Any, issuer: str) -> tuple[GrpcServer, str]:
    """Serve `servicer` on a real gRPC server on a free port, checking tokens against `issuer`."""
    server = GrpcServer([(add, servicer)], verifier=TokenVerifier(issuer))
    port = server.bind("127.0.0.1", 0)
    await server.start()
    await server.set_serving(True)
    return server, f"127.0.0.1:{port}"


async def serve_points(peer: PointsPeer, issuer: str) -> tuple[GrpcServer, str]:
    return await serve(peer, points_pb2_grpc.add_PointsServiceServicer_to_server, issuer)


async def serve_payments(peer: PaymentsPeer, issuer: str) -> tuple[GrpcServer, str]:
    return await serve(peer, fintech_pb2_grpc.add_PaymentsServiceServicer_to_server, issuer)
