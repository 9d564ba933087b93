"""TravelService over gRPC: reading bookings, for the member themself or a service with travel:read."""

from __future__ import annotations

from typing import Any

from kizuna.common.v1 import common_pb2
from kizuna.kit.auth import current_call
from kizuna.kit.errors import InvalidArgument, NotFound
from kizuna.kit.service import Runtime
from kizuna.travel.v1 import travel_pb2 as pb
from kizuna.travel.v1 import travel_pb2_grpc

from travel.booking import Bookings
from travel.booking_store import NOT_MADE
from travel.views import booking_proto

READ_SCOPE = "travel:read"
MAX_PAGE = 100


def _authorize_for(member_id: str) -> None:
    # The member's own token with travel:read, or an ecosystem service with travel:read on its own.
    current_call().require_member_or_service(member_id, READ_SCOPE, READ_SCOPE)


class TravelApi(travel_pb2_grpc.TravelServiceServicer):
    def __init__(self, runtime: Runtime[Any]) -> None:
        self.runtime = runtime

    @property
    def bookings(self) -> Bookings:
        return self.runtime.context_as(Bookings)

    async def GetBooking(self, request: pb.GetBookingRequest, context: Any) -> pb.GetBookingResponse:
        current_call().require_read_scope(READ_SCOPE, READ_SCOPE)
        if not request.booking_id:
            raise InvalidArgument("booking_id is required")
        booking = await self.bookings.get(request.booking_id)
        if booking.status in NOT_MADE:
            raise NotFound(f"unknown booking {request.booking_id!r}")
        _authorize_for(booking.member_id)
        return pb.GetBookingResponse(booking=booking_proto(booking))

    async def ListMemberBookings(
        self, request: pb.ListMemberBookingsRequest, context: Any
    ) -> pb.ListMemberBookingsResponse:
        current_call().require_read_scope(READ_SCOPE, READ_SCOPE)
        if not request.member_id:
            raise InvalidArgument("member_id is required")
        _authorize_for(request.member_id)
        size = min(request.page.page_size or 20, MAX_PAGE)
        try:
            offset = int(request.page.page_token or "0")
        except ValueError:
            raise InvalidArgument("page_token is not one this server gave") from None
        rows = await self.bookings.for_member(request.member_id, offset=offset, limit=size + 1)
        next_token = str(offset + size) if len(rows) > size else ""
        return pb.ListMemberBookingsResponse(
            bookings=[booking_proto(b) for b in rows[:size]],
            page_info=common_pb2.PageInfo(next_page_token=next_token),
        )
