"""IdentityService over gRPC: other services read a member by ID."""

from __future__ import annotations

from typing import Any

import grpc
from kizuna.identity.v1 import identity_pb2, identity_pb2_grpc
from kizuna.kit.auth import current_call
from kizuna.kit.clock import timestamp
from kizuna.kit.errors import PermissionDenied
from kizuna.kit.service import Runtime

from identity import members


class IdentityApi(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, runtime: Runtime[Any]) -> None:
        self.runtime = runtime

    async def GetMember(
        self, request: identity_pb2.GetMemberRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.GetMemberResponse:
        call = current_call()
        # An ecosystem service with identity:read sees the whole record; a member (or an app the
        # member authorized) sees their own, with the name only under `profile` and the email only
        # under `email`, as the member consented.
        service_reader = call.caller.is_service and call.caller.has_scope("identity:read")
        own_record = call.member is not None and call.member.member_id == request.member_id
        shows = {
            scope: service_reader or (own_record and call.member is not None and call.member.has_scope(scope))
            for scope in ("profile", "email")
        }
        if not own_record:
            try:
                call.require_service_scope("identity:read")
            except PermissionDenied as exc:
                await context.abort(exc.grpc_status, exc.message)
        if not request.member_id.startswith("mbr_"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member_id must look like mbr_<ULID>")
        async with self.runtime.db.sessions() as session:
            member = await session.get(members.Member, request.member_id)
        if member is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no member {request.member_id}")
        assert member is not None
        created = timestamp(member.created_at)
        if member.status == members.DELETED:
            return identity_pb2.GetMemberResponse(
                member=identity_pb2.Member(
                    member_id=member.id, status=identity_pb2.MEMBER_STATUS_DELETED, created_at=created
                )
            )
        return identity_pb2.GetMemberResponse(
            member=identity_pb2.Member(
                member_id=member.id,
                display_name=member.display_name if shows["profile"] else "",
                email=member.email if shows["email"] else "",
                status=identity_pb2.MEMBER_STATUS_ACTIVE,
                created_at=created,
            )
        )
