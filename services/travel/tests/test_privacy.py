"""A member's bookings: exported for identity's account center; erasure pseudonymises them."""

from __future__ import annotations

import nats
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.kit.testing import wait_until

from .travel_support import TravelEnv, booking_body, stream_events


async def test_bookings_exported_then_erased(travel: TravelEnv, nats_url: str) -> None:
    headers = travel.member("mbr_trip", points=5_000)
    booked = await travel.http.post("/api/bookings", json=booking_body(points=1_000), headers=headers)
    assert booked.status_code == 201, booked.text
    booking_id = booked.json()["booking_id"]

    url = "/privacy/members/mbr_trip/export"
    member_token = travel.issuer.member_token("mbr_trip", scope="privacy:export")
    assert (await travel.http.get(url, headers={"authorization": f"Bearer {member_token}"})).status_code == 403
    token = travel.issuer.service_token("identity", "privacy:export")
    exported = (await travel.http.get(url, headers={"authorization": f"Bearer {token}"})).json()
    [booking] = exported["data"]["bookings"]
    assert (booking["id"], booking["points_used"], booking["status"]) == (booking_id, 1_000, "confirmed")

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="IDENTITY", subjects=["identity.>"])
    when = Timestamp()
    when.GetCurrentTime()
    request = identity.MemberErasureRequested(member_id="mbr_trip", requested_at=when)
    await js.publish(
        "identity.member.erasure_requested",
        request.SerializeToString(),
        headers={"ce-id": "evt_erasure_travel", "ce-subject": "mbr_trip"},
    )
    await nc.close()

    async def erased() -> list[str]:
        # This member's completion (the worker's stream may hold other tests' completions too).
        events = await stream_events(nats_url, "travel.member.erased")
        members = [identity.ErasureCompleted.FromString(e.data).member_id for e in events]
        return [m for m in members if m == "mbr_trip"]

    assert await wait_until(erased, timeout=20) == ["mbr_trip"]
    rows = await travel.sql("SELECT member_id, status FROM travel_booking WHERE id = :i", i=booking_id)
    assert rows[0][0].startswith("erased_") and rows[0][1] == "confirmed", "the hotel's booking stays, anonymous"
    again = (await travel.http.get(url, headers={"authorization": f"Bearer {token}"})).json()
    assert again["data"]["bookings"] == []
