"""A database that refuses connections is a 503 with Retry-After, not a 500: a page in plain words
for a browser (in the member's language), the kit's JSON error for an API, UNAVAILABLE over gRPC,
each logged once with its cause and never a secret. Against a real PostgreSQL turning a role away
(CONNECTION LIMIT), a closed port and a pool whose every connection is in use."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import httpx
import pytest
from kizuna.identity.v1 import identity_pb2, identity_pb2_grpc
from kizuna.kit.errors import database_refusal
from kizuna.kit.telemetry import configure_telemetry
from kizuna.kit.testing import PostgresServer, free_port, reset_streams
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from .demo.service import demo_settings
from .demo.service import service as demo_service

REFUSED = "refused a connection"


async def _admin(postgres_server: PostgresServer, *statements: str) -> None:
    conn = await asyncpg.connect(postgres_server.admin_url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def _database_of_own_role(postgres_server: PostgresServer) -> AsyncIterator[tuple[str, str, str]]:
    """A fresh database owned by a new login role (not a superuser, whom connection limits spare):
    (the role's asyncpg URL, the role, its password)."""
    parts = urlsplit(await asyncio.to_thread(postgres_server.new_database))
    database = parts.path.lstrip("/")
    role, password = f"kizuna_limited_{uuid.uuid4().hex[:10]}", secrets.token_hex(16)
    await _admin(
        postgres_server,
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
        f'ALTER DATABASE "{database}" OWNER TO {role}',
    )
    netloc = f"{role}:{password}@{parts.netloc.rpartition('@')[2]}"
    try:
        yield urlunsplit(parts._replace(scheme="postgresql+asyncpg", netloc=netloc)), role, password
    finally:
        await _admin(postgres_server, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', f"DROP ROLE {role}")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        formatter = logging.Formatter()
        return [formatter.format(r) for r in self.records]


@contextmanager
def _logs() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def test_a_role_over_its_connection_limit_answers_503_and_unavailable_and_says_why_once(
    nats_url: str, postgres_server: PostgresServer
) -> None:
    configure_telemetry("demo")
    await reset_streams(nats_url, "DEMO", "DEADLETTER")
    async with _database_of_own_role(postgres_server) as (url, role, password):
        async with (
            demo_service.running(demo_settings(nats_url, url)) as runtime,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=10) as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel,
        ):
            assert (await client.post("/notes", json={"text": "before"})).status_code == 200
            # Every connection this role may have is taken (the pool starts empty, as in a pod
            # that has just started while the database is full).
            await _admin(postgres_server, f"ALTER ROLE {role} CONNECTION LIMIT 0")
            await runtime.db.dispose()
            try:
                with _logs() as logs:
                    api = await client.post("/notes", json={"text": "api"})
                    pages = {
                        lang: await client.post(
                            "/notes",
                            json={"text": "page"},
                            headers={"Accept": "text/html,application/xhtml+xml", "Accept-Language": lang},
                        )
                        for lang in ("en", "ja")
                    }
                    stub = identity_pb2_grpc.IdentityServiceStub(channel)
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.GetMember(identity_pb2.GetMemberRequest(member_id="grpc"), timeout=10)
            finally:
                await _admin(postgres_server, f"ALTER ROLE {role} CONNECTION LIMIT -1")

            assert api.status_code == 503, api.text
            assert api.headers["retry-after"] == "5"
            assert api.json() == {
                "error": "database_unavailable",
                "message": "the database is not accepting connections right now; try again in a few seconds",
            }
            for lang, words in (
                ("en", ["This page is not available right now", "Kizuna is very busy", "Nothing was changed"]),
                ("ja", ["現在このページを表示できません", "混み合っています", "変更されたものはありません"]),
            ):
                page = pages[lang]
                assert page.status_code == 503, page.text[:300]
                assert page.headers["retry-after"] == "5"
                assert page.headers["content-type"].startswith("text/html")
                assert all(w in page.text for w in words), (lang, page.text[:2000])
                assert "SQLSTATE" not in page.text and role not in page.text
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not accepting connections" in (refused.value.details() or "")

            # Each refusal is one warning with its cause: four requests, four lines, no traceback,
            # no 500's "unhandled error", and never the password.
            said = [t for t in logs.texts() if REFUSED in t]
            assert len(said) == 4, said
            assert all("too many connections for role" in t and "SQLSTATE 53300" in t for t in said), said
            assert sum("answered UNAVAILABLE" in t for t in said) == 1
            assert not [t for t in logs.texts() if "Traceback" in t and "answered" in t]
            assert not [t for t in logs.texts() if "unhandled error" in t or "Exception in ASGI" in t]
            assert not [t for t in logs.texts() if password in t]

            # The limit lifted, the same request works again.
            assert (await client.post("/notes", json={"text": "after"})).status_code == 200


async def test_a_closed_port_and_an_exhausted_pool_are_refusals_and_other_failures_are_not(
    postgres_server: PostgresServer,
) -> None:
    closed = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(OSError) as refused:
        async with closed.connect() as conn:
            await conn.execute(text("SELECT 1"))
    await closed.dispose()
    cause = database_refusal(refused.value)
    assert cause is not None and cause.cause.startswith("connection refused"), refused.value

    admin = postgres_server.admin_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    busy = create_async_engine(admin, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with busy.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(Exception) as timed_out:
                async with busy.connect():
                    pass
        cause = database_refusal(timed_out.value)
        assert cause is not None and "pool timeout" in cause.cause, timed_out.value
        assert cause.http_status == 503 and cause.grpc_status == grpc.StatusCode.UNAVAILABLE

        # A statement the database rejects is a bug or a bad request, not a busy database: still a 500.
        async with busy.connect() as conn:
            with pytest.raises(Exception) as rejected:
                await conn.execute(text("SELECT * FROM no_such_table"))
        assert database_refusal(rejected.value) is None
    finally:
        await busy.dispose()
    assert database_refusal(ValueError("connection refused")) is None
