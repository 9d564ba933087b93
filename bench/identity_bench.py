"""identity benchmarks (not a test): token endpoint client_credentials throughput and p99, full
authorization code + PKCE flow p95, and access tokens verified per second by the kit's verifier.

    .venv/bin/python bench/identity_bench.py [--requests 1000] [--concurrency 16] [--flows 100]

Runs identity in this process against a real nats-server (from the wheel) and SQLite, or the
database in DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parents[1] / "services" / "identity" / "tests"))

from kizuna.kit.auth import TokenVerifier
from kizuna.kit.testing import NatsServer, free_port
from support import (
    SVC_SECRET,
    WEB_REDIRECT,
    code_for,
    exchange,
    identity_settings,
    pkce_pair,
    running_identity,
    sign_up,
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def client_credentials(issuer: str, total: int, concurrency: int) -> None:
    latencies: list[float] = []
    queue = iter(range(total))
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as http:
        async def worker() -> None:
            for _ in queue:
                start = time.perf_counter()
                response = await http.post(f"{issuer}/token", auth=("svc", SVC_SECRET),
                                           data={"grant_type": "client_credentials", "scope": "points:credit"})
                assert response.status_code == 200, response.text
                latencies.append(time.perf_counter() - start)

        await worker_warmup(http, issuer)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    print(f"token endpoint (client_credentials, {concurrency} concurrent): {total / elapsed:.0f} tokens/s, "
          f"p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms  (n={total})")


async def worker_warmup(http: httpx.AsyncClient, issuer: str) -> None:
    for _ in range(20):
        await http.post(f"{issuer}/token", auth=("svc", SVC_SECRET), data={"grant_type": "client_credentials"})


async def code_flows(idp, flows: int) -> None:  # type: ignore[no-untyped-def]
    browser = idp.browser()
    await sign_up(browser, "bench@example.com")
    latencies: list[float] = []
    for _ in range(flows):
        start = time.perf_counter()
        verifier, challenge = pkce_pair()
        code = await code_for(browser, code_challenge=challenge, code_challenge_method="S256", nonce="n")
        response = await exchange(idp, code, verifier=verifier, redirect_uri=WEB_REDIRECT)
        assert response.status_code == 200
        latencies.append(time.perf_counter() - start)
    print(f"full code + PKCE flow (authorize with a live session -> token): p50 {pct(latencies, 0.5):.1f} ms, "
          f"p95 {pct(latencies, 0.95):.1f} ms  (n={flows}, sequential)")


async def verification(issuer: str, count: int) -> None:
    async with httpx.AsyncClient() as http:
        token = (await http.post(f"{issuer}/token", auth=("svc", SVC_SECRET),
                                 data={"grant_type": "client_credentials", "scope": "points:credit"})).json()["access_token"]
    verifier = TokenVerifier(issuer)
    await verifier.verify(token)  # fetch the JWKS once
    began = time.perf_counter()
    for _ in range(count):
        await verifier.verify(token)
    elapsed = time.perf_counter() - began
    await verifier.aclose()
    print(f"kit TokenVerifier (ES256, cached JWKS, one core): {count / elapsed:.0f} verifications/s  (n={count})")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--flows", type=int, default=100)
    parser.add_argument("--verifications", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        nats_server = NatsServer(free_port(), data / "nats").start()
        try:
            url = os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{data / 'identity.db'}"
            settings = identity_settings(nats_server.url, url, data, log_level="WARNING")
            async with running_identity(settings) as idp:
                print(f"identity at {idp.issuer}, database {url.split(':')[0]}, {os.cpu_count()} CPUs")
                await client_credentials(idp.issuer, args.requests, args.concurrency)
                await code_flows(idp, args.flows)
                await verification(idp.issuer, args.verifications)
        finally:
            nats_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
