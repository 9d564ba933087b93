"""TravelService over real gRPC with the kit's token checks."""

from __future__ import annotations

import grpc
import pytest
from kizuna.common.v1 import common_pb2
from kizuna.kit.auth import call_metadata
from kizuna.travel.v1 import travel_pb2 as pb
from kizuna.travel.v1 import travel_pb2_grpc

from .travel_support import TravelEnv, booking_body, days_ahead


async def test_members_and_services_with_travel_read_see_bookings_others_do_not(travel: TravelEnv) -> None:
    reader_member = await travel.member()
    headers = reader_member.headers
    mine = reader_member.id
    issuer = travel.ecosystem.issuer
    ids = []
    for i in range(3):
        resp = await travel.http.post(
            "/api/bookings", json=booking_body(check_in=days_ahead(3 + 2 * i), nights=1, key=f"g{i}"), headers=headers
        )
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["booking_id"])
    member = issuer.member_token(mine, scope="travel:read")
    other = issuer.member_token("mbr_other", scope="travel:read")
    # The member's own token from an app the member allowed only to see who they are.
    profile_only = issuer.member_token(mine, scope="openid profile", client_id="third-party")
    reader = issuer.service_token("points", "travel:read")
    stranger = issuer.service_token("shop", "points:credit")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{travel.runtime.grpc_port}") as channel:
        stub = travel_pb2_grpc.TravelServiceStub(channel)
        got = await stub.GetBooking(pb.GetBookingRequest(booking_id=ids[0]), metadata=call_metadata(member), timeout=5)
        assert got.booking.status == pb.BOOKING_STATUS_CONFIRMED and got.booking.member_id == mine
        assert got.booking.check_in == common_pb2.Date(
            year=days_ahead(3).year, month=days_ahead(3).month, day=days_ahead(3).day
        )
        by_service = await stub.GetBooking(
            pb.GetBookingRequest(booking_id=ids[1]), metadata=call_metadata(reader), timeout=5
        )
        assert by_service.booking.booking_id == ids[1]

        page1 = await stub.ListMemberBookings(
            pb.ListMemberBookingsRequest(member_id=mine, page=common_pb2.PageRequest(page_size=2)),
            metadata=call_metadata(reader),
            timeout=5,
        )
        page2 = await stub.ListMemberBookings(
            pb.ListMemberBookingsRequest(
                member_id=mine,
                page=common_pb2.PageRequest(page_size=2, page_token=page1.page_info.next_page_token),
            ),
            metadata=call_metadata(member),
            timeout=5,
        )
        assert [b.booking_id for b in [*page1.bookings, *page2.bookings]] == ids[::-1]
        assert page2.page_info.next_page_token == ""

        for call, token, code in [
            (
                stub.GetBooking(pb.GetBookingRequest(booking_id=ids[0]), metadata=call_metadata(other), timeout=5),
                "other member",
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                stub.GetBooking(
                    pb.GetBookingRequest(booking_id=ids[0]), metadata=call_metadata(profile_only), timeout=5
                ),
                "own token without travel:read",
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                stub.ListMemberBookings(
                    pb.ListMemberBookingsRequest(member_id=mine),
                    metadata=call_metadata(reader, profile_only),
                    timeout=5,
                ),
                "a service passing on a token without travel:read",
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                stub.GetBooking(pb.GetBookingRequest(booking_id=ids[0]), metadata=call_metadata(stranger), timeout=5),
                "service without travel:read",
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                stub.ListMemberBookings(
                    pb.ListMemberBookingsRequest(member_id=mine), metadata=call_metadata(other), timeout=5
                ),
                "list as another member",
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                stub.GetBooking(pb.GetBookingRequest(booking_id="bkg_nope"), metadata=call_metadata(reader), timeout=5),
                "unknown",
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                stub.GetBooking(pb.GetBookingRequest(booking_id=ids[0]), timeout=5),
                "no token",
                grpc.StatusCode.UNAUTHENTICATED,
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == code, token
