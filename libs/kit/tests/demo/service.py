"""demo: notes written over HTTP or gRPC, each publishing `demo.note.created`; a consumer records
an effect per event. Notes whose text starts with "poison" make the consumer fail."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from kizuna.identity.v1 import events_pb2, identity_pb2, identity_pb2_grpc
from kizuna.kit.db import SessionDep
from kizuna.kit.events import Consumer, Event, publish
from kizuna.kit.rpc import client_channel
from kizuna.kit.service import Runtime, Service
from kizuna.kit.settings import ServiceSettings
from pydantic import BaseModel
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession


class DemoNote(SQLModel, table=True):
    __tablename__ = "demo_note"
    id: int | None = Field(default=None, primary_key=True)
    text: str


class DemoEffect(SQLModel, table=True):
    __tablename__ = "demo_effect"
    id: int | None = Field(default=None, primary_key=True)
    event_id: str
    text: str


class NoteIn(BaseModel):
    text: str
    fail_after_write: bool = False


router = APIRouter()


async def write_note(session: AsyncSession, text: str) -> str:
    session.add(DemoNote(text=text))
    return await publish(session, "demo.note.created", events_pb2.MemberRegistered(member_id=text), member_id=text)


@router.post("/notes")
async def create_note(body: NoteIn, session: SessionDep) -> dict[str, str]:
    async with session.begin():
        event_id = await write_note(session, body.text)
        if body.fail_after_write:
            raise RuntimeError("failure after the write: the transaction must roll back")
    return {"event_id": event_id}


@router.post("/notes/via-grpc")
async def create_note_via_grpc(body: NoteIn, request: Request) -> dict[str, str]:
    runtime: Runtime[ServiceSettings] = request.app.state.runtime
    async with client_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        reply = await stub.GetMember(identity_pb2.GetMemberRequest(member_id=body.text), timeout=5)
    return {"event_id": reply.member.display_name}


class DemoApi(identity_pb2_grpc.IdentityServiceServicer):
    """GetMember writes a note (a stand-in for any mutating RPC); `slow:<s>` sleeps first."""

    def __init__(self, runtime: Runtime[ServiceSettings]) -> None:
        self.runtime = runtime

    async def GetMember(
        self, request: identity_pb2.GetMemberRequest, context: object
    ) -> identity_pb2.GetMemberResponse:
        if request.member_id.startswith("slow:"):
            await asyncio.sleep(float(request.member_id.split(":")[1]))
        async with self.runtime.db.transaction() as session:
            event_id = await write_note(session, request.member_id)
        return identity_pb2.GetMemberResponse(
            member=identity_pb2.Member(member_id=request.member_id, display_name=event_id)
        )


async def record_effect(session: AsyncSession, event: Event) -> None:
    text = event.parse(events_pb2.MemberRegistered).member_id
    if text.startswith("poison"):
        raise ValueError(f"cannot handle {text}")
    session.add(DemoEffect(event_id=event.id, text=text))


def demo_settings(nats_url: str, database_url: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "kizuna_issuer": "http://127.0.0.1:1",
        "database_url": database_url,
        "http_port": 0,
        "grpc_port": 0,
        "outbox_poll_seconds": 0.2,
        "consumer_max_deliver": 3,
        "log_format": "text",
        **overrides,
    }
    return ServiceSettings(**values)


service = Service(
    name="demo",
    settings=ServiceSettings,
    http=router,
    grpc=[(identity_pb2_grpc.add_IdentityServiceServicer_to_server, DemoApi)],
    consumers=[
        Consumer(name="demo-effects", subjects=["demo.note.created"], handler=record_effect, retry_delay_seconds=0.1)
    ],
    migrations_dir=Path(__file__).parent / "migrations",
    verify_tokens=False,
)

if __name__ == "__main__":
    service.main()
