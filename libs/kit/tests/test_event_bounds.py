"""An event that can never be processed (its payload is not the declared message, or it carries
text no database can store) goes to the dead-letter subject on its first delivery, instead of
being retried; the events after it flow."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import nats
import nats.js.errors
import pytest
from kizuna.identity.v1 import events_pb2
from kizuna.kit.service import Runtime
from kizuna.kit.settings import ServiceSettings
from kizuna.kit.testing import wait_until
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from sqlmodel import select

from .demo.service import DemoEffect


async def _dead_letters(nats_url: str) -> list[Msg]:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(
            "deadletter.demo.demo-effects", config=ConsumerConfig(inactive_threshold=5)
        )
        try:
            return list(await sub.fetch(100, timeout=1))
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when a fetch deadline passes
            return []
    except nats.js.errors.NotFoundError:
        return []
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (events_pb2.MemberRegistered(member_id="mbr_\x00nul").SerializeToString(), "NUL"),
        (b"\xff\xff\xff\xff not protobuf", "is not a kizuna.identity.v1.MemberRegistered"),
    ],
    ids=["nul-text", "not-protobuf"],
)
async def test_an_unprocessable_event_is_dead_lettered_at_once(
    demo: Runtime[ServiceSettings], nats_url: str, payload: bytes, error: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish("demo.note.created", payload, headers={"Nats-Msg-Id": "evt-unstorable"})
    finally:
        await nc.close()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.http_port}") as client:
        assert (await client.post("/notes", json={"text": "after"})).status_code == 200

    async def effects() -> list[str]:
        async with demo.db.sessions() as session:
            return list((await session.exec(select(DemoEffect.text))).all())

    assert await wait_until(lambda: _equals(effects, ["after"]))
    [dead] = await wait_until(lambda: _dead_letters(nats_url), timeout=15)
    assert dead.headers["kizuna-deliveries"] == "1"  # not retried: it could never succeed
    assert error in dead.headers["kizuna-error"]


async def _equals(fn: Callable[[], Awaitable[list[str]]], expected: list[str]) -> bool:
    return (await fn()) == expected
