"""A service's typed context and its one clock: built once at start (sync or async factory), read
typed by routes (`context_of`) and by code holding the runtime (`context_as`), closed at stop;
objects built at start follow `runtime.clock` when a test swaps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends
from kizuna.kit.clock import Clock, FrozenClock, LiveClock
from kizuna.kit.service import Runtime, Service, context_of
from kizuna.kit.settings import ServiceSettings

from .demo.service import demo_settings

TESTS = Path(__file__).parent
closed: list[str] = []


@dataclass
class Desk:
    runtime_name: str
    clock: Clock
    opened: list[str] = field(default_factory=list)

    async def aclose(self) -> None:
        closed.append(self.runtime_name)


async def open_desk(runtime: Runtime[Any]) -> Desk:
    # Async on purpose: a factory may read the database or fetch keys before the service is ready.
    return Desk(runtime.name, LiveClock(lambda: runtime.clock), opened=["at start"])


DeskDep = Annotated[Desk, Depends(context_of(Desk))]
router = APIRouter()


@router.get("/desk")
async def desk(ctx: DeskDep) -> dict[str, Any]:
    return {"service": ctx.runtime_name, "opened": ctx.opened, "now": ctx.clock.now().isoformat()}


def demo(context: Any) -> Service[Any]:
    return Service(
        name="demo",
        settings=ServiceSettings,
        http=router,
        migrations_dir=TESTS / "demo" / "migrations",
        verify_tokens=False,
        context=context,
    )


async def test_routes_read_the_context_typed_and_follow_the_runtime_clock(nats_url: str, tmp_path: Path) -> None:
    closed.clear()
    settings = demo_settings(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    async with demo(open_desk).running(settings) as runtime:
        assert runtime.context_as(Desk).opened == ["at start"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}") as client:
            body = (await client.get("/desk")).json()
            assert body["service"] == "demo" and body["opened"] == ["at start"]
            frozen = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
            runtime.clock = FrozenClock(frozen)
            assert (await client.get("/desk")).json()["now"] == frozen.isoformat()
        with pytest.raises(RuntimeError, match="demo has no str context"):
            runtime.context_as(str)
        assert closed == []
    assert closed == ["demo"]


async def test_a_service_without_a_context_says_so(nats_url: str, tmp_path: Path) -> None:
    settings = demo_settings(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    async with demo(None).running(settings) as runtime:
        with pytest.raises(RuntimeError, match="demo has no Desk context"):
            runtime.context_as(Desk)
