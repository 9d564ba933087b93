"""The token endpoint's client cache: an expired entry is read again once, not once per request."""

from __future__ import annotations

import asyncio
from typing import Any

from identity.provider import CLIENT_CACHE_ENTRIES, CLIENT_CACHE_SECONDS
from sqlalchemy import event

from .identity_support import SVC_SECRET, Idp


async def test_an_expired_client_is_read_once_however_many_token_requests_arrive(idp: Idp) -> None:
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM identity_client" in statement:
            reads.append(statement)

    engine = idp.provider.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        async with idp.browser() as http:

            async def token() -> int:
                form = {"grant_type": "client_credentials", "scope": "points:read"}
                response = await http.post("/token", auth=("svc", SVC_SECRET), data=form)
                return response.status_code

            assert await token() == 200
            await asyncio.sleep(CLIENT_CACHE_SECONDS + 0.2)
            reads.clear()
            # 24 requests in flight as the entry has expired: one read serves them all.
            assert await asyncio.gather(*(token() for _ in range(24))) == [200] * 24
            assert len(reads) == 1, reads
            # A wrong secret is still refused while the entry is being read again.
            wrong = await http.post("/token", auth=("svc", "not-it"), data={"grant_type": "client_credentials"})
            assert wrong.status_code == 401
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def test_a_flood_of_unknown_client_ids_does_not_grow_the_cache_without_end(idp: Idp) -> None:
    assert CLIENT_CACHE_ENTRIES == idp.provider.client_cache_entries == 4096
    idp.provider.client_cache_entries = 40  # the same rule with a bound a test can fill quickly
    async with idp.browser() as http:
        form = {"grant_type": "client_credentials"}
        for start in range(0, 150, 30):
            replies = await asyncio.gather(
                *(http.post("/token", auth=(f"nobody-{n}", "x"), data=form) for n in range(start, start + 30))
            )
            assert {reply.status_code for reply in replies} == {401}
            assert len(idp.provider._clients) <= 40
        # The service's own client is still served, and read again into the cache.
        ok = await http.post("/token", auth=("svc", SVC_SECRET), data={**form, "scope": "points:read"})
        assert ok.status_code == 200
        assert "svc" in idp.provider._clients
