"""A member's points data: exported for identity's account center; erasure closes the wallet and
keeps the (anonymous) ledger balanced."""

from __future__ import annotations

import grpc
import httpx
import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2 as identity
from kizuna.kit.testing import wait_until
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from .pointskit import Points


async def test_export_then_erasure(points: Points, nats_url: str) -> None:
    await points.register("mbr_erase", "mbr_keep")
    await points.credit("mbr_erase", 500)
    await points.spend("mbr_erase", 120)
    await points.credit("mbr_keep", 70)

    base = f"http://127.0.0.1:{points.runtime.http_port}"
    url = "/privacy/members/mbr_erase/export"
    async with httpx.AsyncClient(base_url=base) as client:
        as_member = points.issuer.member_token("mbr_erase", scope="points:read privacy:export")
        assert (await client.get(url, headers={"authorization": f"Bearer {as_member}"})).status_code == 403
        token = points.issuer.service_token("identity", "privacy:export")
        exported = (await client.get(url, headers={"authorization": f"Bearer {token}"})).json()
    assert exported["service"] == "points"
    assert exported["data"]["wallet"]["available"] == 380
    amounts = [e["amount"] for e in exported["data"]["entries"]]
    assert 500 in amounts and -120 in amounts

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="IDENTITY", subjects=["identity.>"])
    when = Timestamp()
    when.GetCurrentTime()
    request = identity.MemberErasureRequested(member_id="mbr_erase", requested_at=when)
    await js.publish(
        "identity.member.erasure_requested",
        request.SerializeToString(),
        headers={"ce-id": "evt_erasure_points", "ce-subject": "mbr_erase"},
    )
    sub = await js.pull_subscribe("points.member.erased", config=ConsumerConfig(inactive_threshold=5))

    async def erased() -> list[Msg]:
        try:
            return await sub.fetch(1, timeout=1)
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
            return []

    [done] = await wait_until(erased, timeout=20)
    assert identity.ErasureCompleted.FromString(done.data).service == "points"
    await nc.close()

    # The wallet is closed: no more credits or spending; the other member is untouched.
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await points.credit("mbr_erase", 10)
    assert closed.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
    assert (await points.balance("mbr_keep")).total == 70
