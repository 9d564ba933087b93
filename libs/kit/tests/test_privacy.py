"""Export and erasure of a member's data through the kit's privacy protocol (real HTTP and NATS)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import nats
from google.protobuf.timestamp_pb2 import Timestamp
from kizuna.identity.v1 import events_pb2, identity_pb2_grpc
from kizuna.kit.privacy import Privacy
from kizuna.kit.service import Service
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.testing import TestIssuer, reset_streams, wait_until
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from .demo.service import DemoApi, DemoNote, demo_settings, router

TESTS = Path(__file__).parent


async def export_notes(session: AsyncSession, member_id: str) -> dict[str, object]:
    notes = (await session.exec(select(DemoNote.text).where(DemoNote.text == member_id))).all()
    return {"notes": list(notes)}


async def erase_notes(session: AsyncSession, member_id: str) -> None:
    await session.exec(delete(DemoNote).where(col(DemoNote.text) == member_id))


private_demo = Service(
    name="demo",
    settings=ServiceSettings,
    http=router,
    grpc=[(identity_pb2_grpc.add_IdentityServiceServicer_to_server, DemoApi)],
    migrations_dir=TESTS / "demo" / "migrations",
    privacy=Privacy(export=export_notes, erase=erase_notes),
)


async def test_export_needs_identitys_service_token_and_erasure_reports_completion(
    nats_url: str, database_url: str, test_issuer: TestIssuer
) -> None:
    await reset_streams(nats_url, "DEMO", "IDENTITY")
    settings = demo_settings(nats_url, database_url, kizuna_issuer=test_issuer.issuer)
    async with private_demo.running(settings) as runtime:
        base = f"http://127.0.0.1:{runtime.http_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            for text in ("mbr_A", "mbr_A", "mbr_B"):
                assert (await client.post("/notes", json={"text": text})).status_code == 200

            url = "/privacy/members/mbr_A/export"
            assert (await client.get(url)).status_code == 401
            member = test_issuer.member_token("mbr_A", scope="privacy:export")
            assert (await client.get(url, headers={"authorization": f"Bearer {member}"})).status_code == 403
            wrong_scope = test_issuer.service_token("identity", "points:read")
            assert (await client.get(url, headers={"authorization": f"Bearer {wrong_scope}"})).status_code == 403
            token = test_issuer.service_token("identity", "privacy:export")
            exported = await client.get(url, headers={"authorization": f"Bearer {token}"})
            assert exported.status_code == 200
            assert exported.json()["data"] == {"notes": ["mbr_A", "mbr_A"]}
            assert exported.json()["service"] == "demo"

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name="IDENTITY", subjects=["identity.>"])
        requested_at = Timestamp()
        requested_at.GetCurrentTime()
        request = events_pb2.MemberErasureRequested(member_id="mbr_A", requested_at=requested_at)
        for _ in range(2):  # a duplicate request erases nothing more and reports once
            await js.publish(
                "identity.member.erasure_requested",
                request.SerializeToString(),
                headers={"ce-id": "evt_erase_1", "ce-subject": "mbr_A"},
            )

        async def notes() -> list[str]:
            async with runtime.db.sessions() as session:
                return sorted((await session.exec(select(DemoNote.text))).all())

        assert await wait_until(lambda: _eq(notes, ["mbr_B"]))
        sub = await js.pull_subscribe("demo.member.erased", config=ConsumerConfig(inactive_threshold=5))
        completed = await wait_until(lambda: _fetch(sub))
        assert len(completed) == 1
        done = events_pb2.ErasureCompleted.FromString(completed[0].data)
        assert (done.member_id, done.service) == ("mbr_A", "demo")
        await nc.close()


async def _eq(fn: Callable[[], Awaitable[list[str]]], expected: list[str]) -> bool:
    return (await fn()) == expected


async def _fetch(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    try:
        return await sub.fetch(10, timeout=1)
    except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
        return []
