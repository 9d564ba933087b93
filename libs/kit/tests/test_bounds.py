"""The kit's input bounds: what InputGuard, the int64 types and the gRPC check refuse, and that
what they let through reaches the route unchanged (a real FastAPI app served by uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from kizuna.identity.v1 import identity_pb2
from kizuna.kit.bounds import (
    InputGuard,
    NonNegInt64,
    Text,
    check_message,
    install_validation_errors,
    json_problem,
    same_secret,
    text_problem,
)
from kizuna.kit.errors import InvalidArgument
from kizuna.kit.testing import wait_until
from pydantic import BaseModel


class Body(BaseModel):
    name: Text
    amount: int


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(InputGuard, max_body=4096)
    install_validation_errors(app)

    @app.get("/items")
    async def items(offset: NonNegInt64 = 0, q: str = "") -> dict[str, Any]:
        return {"offset": offset, "q": q}

    @app.post("/items")
    async def create(body: Body) -> dict[str, Any]:
        return body.model_dump()

    return app


async def _started(server: uvicorn.Server) -> bool:
    return bool(server.started)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: _started(server), timeout=10, interval=0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_values_within_bounds_reach_the_route_unchanged(http: httpx.AsyncClient) -> None:
    assert (await http.get("/items", params={"offset": 2**63 - 1, "q": "日本"})).json() == {
        "offset": 2**63 - 1,
        "q": "日本",
    }
    body = {"name": "café ☕", "amount": -(2**63)}
    assert (await http.post("/items", json=body)).json() == body
    form = await http.post("/items", data={"name": "x"})
    assert form.status_code == 422  # a form where JSON is expected: the route's own validation


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        ('{"name": "a", "amount": 9223372036854775808}', 400, "out of range"),
        ('{"name": "a", "amount": -9223372036854775809}', 400, "out of range"),
        ('{"name": "a", "amount": 1e400}', 400, "out of range"),
        ('{"name": "a", "amount": NaN}', 400, "not a JSON number"),
        ('{"name": "\\udc80", "amount": 1}', 400, "lone surrogate"),
        ('{"name": "a\\u0000", "amount": 1}', 400, "NUL"),
        ('{"\\u0000": 1, "name": "a", "amount": 1}', 400, "NUL"),
        ('{"name": "a", "amount": "many"}', 422, ""),
        ('{"name": ', 422, ""),
    ],
)
async def test_json_bodies_with_unstorable_values_are_refused(
    http: httpx.AsyncClient, raw: str, status: int, message: str
) -> None:
    response = await http.post("/items", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.text


async def test_nul_in_path_query_and_form_and_oversized_bodies_are_refused(http: httpx.AsyncClient) -> None:
    assert (await http.get("/items%00")).status_code == 400
    assert (await http.get("/items", params={"q": "a\x00"})).status_code == 400
    assert (await http.post("/items", data={"name": "a\x00"})).status_code == 400
    big = json.dumps({"name": "a" * 5000, "amount": 1})
    assert (await http.post("/items", content=big, headers={"content-type": "application/json"})).status_code == 413


async def test_an_int64_overflow_in_a_query_is_a_422_naming_the_bound(http: httpx.AsyncClient) -> None:
    response = await http.get("/items", params={"offset": 2**63})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "offset"]
    assert (await http.get("/items", params={"offset": -1})).status_code == 422


def test_the_pure_checks() -> None:
    assert text_problem("ok ☕") is None
    assert text_problem("a\x00") == "contains a NUL character"
    assert text_problem("\udc80") is not None
    assert json_problem(b'{"a": [1, {"b": "\\u0000"}]}') == "body.a[1].b contains a NUL character"
    assert json_problem(b"not json") is None
    assert same_secret("abc", "abc") and not same_secret("日本", "abc") and not same_secret("\udc80", "x")


def test_a_grpc_request_with_nul_text_is_an_invalid_argument() -> None:
    check_message(identity_pb2.GetMemberRequest(member_id="mbr_ok"))
    with pytest.raises(InvalidArgument, match="member_id contains a NUL"):
        check_message(identity_pb2.GetMemberRequest(member_id="mbr_\x00"))
