"""A member's bookings: exported for identity's account center; erasure pseudonymises them."""

from __future__ import annotations

import uuid

import nats
import nats.js.errors
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2 as identity

from .travel_support import TravelEnv, booking_body, stream_events, wait_until


async def test_bookings_exported_then_erased(travel: TravelEnv) -> None:
    member = await travel.member(points=5_000)
    booked = await travel.http.post("/api/bookings", json=booking_body(points=1_000), headers=member.headers)
    assert booked.status_code == 201, booked.text
    booking_id = booked.json()["booking_id"]
    issuer = travel.ecosystem.issuer

    url = f"/privacy/members/{member.id}/export"
    member_token = issuer.member_token(member.id, scope="privacy:export")
    assert (await travel.http.get(url, headers={"authorization": f"Bearer {member_token}"})).status_code == 403
    token = issuer.service_token("identity", "privacy:export")
    exported = (await travel.http.get(url, headers={"authorization": f"Bearer {token}"})).json()
    [booking] = exported["data"]["bookings"]
    assert (booking["id"], booking["points_used"], booking["status"]) == (booking_id, 1_000, "confirmed")

    nc = await nats.connect(travel.nats_url)
    js = nc.jetstream()
    try:
        await js.stream_info("IDENTITY")
    except nats.js.errors.NotFoundError:
        await js.add_stream(name="IDENTITY", subjects=["identity.>"])
    when = Timestamp()
    when.GetCurrentTime()
    request = identity.MemberErasureRequested(member_id=member.id, requested_at=when)
    await js.publish(
        "identity.member.erasure_requested",
        request.SerializeToString(),
        headers={"ce-id": f"evt_{uuid.uuid4().hex}", "ce-subject": member.id},
    )
    await nc.close()

    async def erased() -> list[str]:
        # This member's completion (the stream holds the module's other tests' completions too).
        events = await stream_events(travel.nats_url, "travel.member.erased")
        members = [identity.ErasureCompleted.FromString(e.data).member_id for e in events]
        return [m for m in members if m == member.id]

    assert await wait_until(erased, timeout=20) == [member.id]
    rows = await travel.sql("SELECT member_id, status FROM travel_booking WHERE id = :i", i=booking_id)
    assert rows[0][0].startswith("erased_") and rows[0][1] == "confirmed", "the hotel's booking stays, anonymous"
    again = (await travel.http.get(url, headers={"authorization": f"Bearer {token}"})).json()
    assert again["data"]["bookings"] == []
