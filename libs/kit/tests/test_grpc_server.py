"""The kit's gRPC server wraps every method it serves, however the method was registered: a token
check, bounds and error mapping around a hand-written generic handler as around a generated
servicer; a service that authenticates its callers itself is served without the token check; a
streaming method, which the wrapping does not cover, is refused when registered instead of being
served unverified."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from kizuna.identity.v1 import identity_pb2 as pb
from kizuna.kit.auth import TokenVerifier, call_metadata, current_call
from kizuna.kit.errors import DomainError, NotFound, Unauthenticated, Unavailable
from kizuna.kit.rpc import GrpcServer, peer_error
from kizuna.kit.testing import TestIssuer

SERVICE = "kizuna.test.Echo"


async def _who(request: pb.GetMemberRequest, context: Any) -> pb.GetMemberResponse:
    if request.member_id == "nobody":
        raise NotFound("no such member")
    try:
        caller = current_call().caller.client_id or ""
    except Unauthenticated:  # no verified caller: a service with its own auth
        caller = "unverified"
    return pb.GetMemberResponse(member=pb.Member(member_id=request.member_id, display_name=caller))


def _generic(behavior: Any) -> Any:
    """A hand-written registration of `behavior` as Who: one generic handler, no registered methods."""

    def register(servicer: Any, server: Any) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=pb.GetMemberRequest.FromString,
            response_serializer=pb.GetMemberResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Who": handler}),))

    return register


_generic_only = _generic(_who)


async def _serve(**kw: Any) -> tuple[GrpcServer, str]:
    server = GrpcServer([(_generic_only, None)], **kw)
    port = server.bind("127.0.0.1", 0)
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _who_call(address: str, member_id: str, metadata: Any = None) -> pb.GetMemberResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        who = channel.unary_unary(
            f"/{SERVICE}/Who",
            request_serializer=pb.GetMemberRequest.SerializeToString,
            response_deserializer=pb.GetMemberResponse.FromString,
        )
        reply: pb.GetMemberResponse = await who(pb.GetMemberRequest(member_id=member_id), metadata=metadata, timeout=5)
        return reply


async def test_a_generic_handler_is_verified_bounded_and_mapped(test_issuer: TestIssuer) -> None:
    server, address = await _serve(verifier=TokenVerifier(test_issuer.issuer))
    assert server.service_names == [SERVICE]  # as registered: health answers for it, reflection lists it
    try:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await _who_call(address, "m-1")
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = call_metadata(test_issuer.service_token("shop", "x"))
        reply = await _who_call(address, "m-1", token)
        assert (reply.member.member_id, reply.member.display_name) == ("m-1", "shop")
        with pytest.raises(grpc.aio.AioRpcError) as nul:
            await _who_call(address, "m\x00-1", token)
        assert nul.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await _who_call(address, "nobody", token)
        assert (unknown.value.code(), unknown.value.details()) == (grpc.StatusCode.NOT_FOUND, "no such member")
        async with grpc.aio.insecure_channel(address) as channel:
            nowhere = channel.unary_unary(f"/{SERVICE}/Nowhere", request_serializer=bytes, response_deserializer=bytes)
            with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
                await nowhere(b"", metadata=token, timeout=5)
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


async def test_a_service_with_its_own_auth_is_served_without_a_token(test_issuer: TestIssuer) -> None:
    server, address = await _serve(verifier=TokenVerifier(test_issuer.issuer), own_auth=[SERVICE])
    try:
        reply = await _who_call(address, "m-1")
        assert reply.member.display_name == "unverified"
        with pytest.raises(grpc.aio.AioRpcError) as nul:  # still bounded
            await _who_call(address, "m\x00-1")
        assert nul.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)


async def test_a_streaming_method_is_refused_when_registered() -> None:
    async def watch(request: Any, context: Any) -> Any:
        yield pb.GetMemberResponse()

    def register(servicer: Any, server: Any) -> None:
        server.add_registered_method_handlers(SERVICE, {"Watch": grpc.unary_stream_rpc_method_handler(watch)})

    with pytest.raises(TypeError, match=f"/{SERVICE}/Watch: the kit's gRPC server serves unary methods only"):
        GrpcServer([(register, None)])


async def test_a_caller_tells_a_peer_s_refusal_from_a_call_that_got_no_answer(test_issuer: TestIssuer) -> None:
    """`peer_error`: a refusal the peer gave (even UNAVAILABLE) keeps the peer's words; no server,
    or none in time, is said as such ("cannot be reached", "did not answer in time")."""

    async def busy(request: pb.GetMemberRequest, context: Any) -> pb.GetMemberResponse:
        if request.member_id == "slow":
            await asyncio.sleep(5)
        raise Unavailable("the payment is still in progress")

    server = GrpcServer([(_generic(busy), None)], verifier=TokenVerifier(test_issuer.issuer))
    port = server.bind("127.0.0.1", 0)
    await server.start()
    token = call_metadata(test_issuer.service_token("shop", "x"))

    async def error_of(address: str, member_id: str, timeout: float) -> DomainError:
        async with grpc.aio.insecure_channel(address) as channel:
            who = channel.unary_unary(
                f"/{SERVICE}/Who",
                request_serializer=pb.GetMemberRequest.SerializeToString,
                response_deserializer=pb.GetMemberResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await who(pb.GetMemberRequest(member_id=member_id), metadata=token, timeout=timeout)
        return peer_error("fintech", failed.value)

    try:
        refused = await error_of(f"127.0.0.1:{port}", "m-1", 5)
        assert isinstance(refused, Unavailable) and refused.message == "fintech: the payment is still in progress"
        late = await error_of(f"127.0.0.1:{port}", "slow", 0.3)
        assert isinstance(late, Unavailable) and late.message == "fintech did not answer in time"
    finally:
        await server.stop(0)
    # Port 1: nothing listens there.
    gone = await error_of("127.0.0.1:1", "m-1", 5)
    assert isinstance(gone, Unavailable) and gone.message.startswith("fintech cannot be reached (UNAVAILABLE: ")
