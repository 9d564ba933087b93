"""identity benchmarks (not a test): token endpoint client_credentials throughput and p99, full
authorization code + PKCE flow p95, password sign-ins per second (argon2id), and access tokens
verified per second by the kit's verifier.

    .venv/bin/python -m bench.identity_bench [--requests 1000] [--concurrency 16] [--flows 100]

(run as a module from the repository's root: it uses identity's test helpers,
`services.identity.tests.identity_support`)

Runs identity in this process against a real nats-server (from the wheel) and SQLite, or the
database in DATABASE_URL; the load comes from a separate client process (`--client ISSUER`), so
client and server do not share one event loop or one GIL.
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
from identity.settings import Settings
from kizuna.kit.auth import TokenVerifier
from kizuna.kit.testing import NatsServer, free_port

from services.identity.tests.identity_support import (
    SVC_SECRET,
    WEB_REDIRECT,
    code_for,
    exchange,
    identity_settings,
    pkce_pair,
    running_identity,
    sign_in,
    sign_up,
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def client_credentials(issuer: str, total: int, concurrency: int) -> None:
    latencies: list[float] = []
    queue = iter(range(total))
    errors = 0
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), timeout=60) as http:

        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                start = time.perf_counter()
                response = await http.post(
                    f"{issuer}/token",
                    auth=("svc", SVC_SECRET),
                    data={"grant_type": "client_credentials", "scope": "points:credit"},
                )
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors += 1

        await worker_warmup(http, issuer)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    print(
        f"token endpoint (client_credentials, {concurrency} concurrent): {total / elapsed:.0f} tokens/s, "
        f"p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms  (n={total}, errors {errors})"
    )


async def worker_warmup(http: httpx.AsyncClient, issuer: str) -> None:
    for _ in range(20):
        await http.post(f"{issuer}/token", auth=("svc", SVC_SECRET), data={"grant_type": "client_credentials"})


class _Issuer:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def browser(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.issuer, follow_redirects=False, timeout=10)


async def code_flows(idp: _Issuer, flows: int) -> None:
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
    print(
        f"full code + PKCE flow (authorize with a live session -> token): p50 {pct(latencies, 0.5):.1f} ms, "
        f"p95 {pct(latencies, 0.95):.1f} ms  (n={flows}, sequential)"
    )


async def password_sign_ins(idp: _Issuer, total: int, concurrency: int) -> None:
    """Sign-in form posts (GET the form for its CSRF token, POST the password) from fresh browsers,
    one member per worker (attempts for one account are serialised by the throttle's lock)."""
    emails = [f"signin-bench-{n}@example.com" for n in range(concurrency)]
    for email in emails:
        async with idp.browser() as setup:
            await sign_up(setup, email)
    latencies: list[float] = []
    queue = iter(range(total))
    failed = 0

    async def worker(email: str) -> None:
        nonlocal failed
        for _ in queue:
            async with idp.browser() as browser:
                start = time.perf_counter()
                response = await sign_in(browser, email)
                latencies.append(time.perf_counter() - start)
                failed += response.status_code not in (302, 303)

    began = time.perf_counter()
    await asyncio.gather(*(worker(email) for email in emails))
    elapsed = time.perf_counter() - began
    print(
        f"password sign-in (form + argon2id verify, {concurrency} concurrent): {total / elapsed:.1f} sign-ins/s, "
        f"p50 {pct(latencies, 0.5):.0f} ms, p99 {pct(latencies, 0.99):.0f} ms  (n={total}, failed {failed})"
    )


async def verification(issuer: str, count: int) -> None:
    async with httpx.AsyncClient() as http:
        token = (
            await http.post(
                f"{issuer}/token",
                auth=("svc", SVC_SECRET),
                data={"grant_type": "client_credentials", "scope": "points:credit"},
            )
        ).json()["access_token"]
    verifier = TokenVerifier(issuer)
    await verifier.verify(token)  # fetch the JWKS once
    began = time.perf_counter()
    for _ in range(count):
        await verifier.verify(token)
    elapsed = time.perf_counter() - began
    await verifier.aclose()
    print(f"kit TokenVerifier (ES256, cached JWKS, one core): {count / elapsed:.0f} verifications/s  (n={count})")


async def client(args: argparse.Namespace) -> None:
    """The load, from its own process: one phase at a time so the server's CPU can be attributed."""
    if args.phase == "tokens":
        await client_credentials(args.client, args.requests, args.concurrency)
    elif args.phase == "signins":
        await password_sign_ins(_Issuer(args.client), args.signins, 4)
    else:
        await code_flows(_Issuer(args.client), args.flows)
        await verification(args.client, args.verifications)


async def load_process(issuer: str, phase: str, args: argparse.Namespace) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.identity_bench",
        "--client",
        issuer,
        "--phase",
        phase,
        "--requests",
        str(args.requests),
        "--concurrency",
        str(args.concurrency),
        "--flows",
        str(args.flows),
        "--verifications",
        str(args.verifications),
        "--signins",
        str(args.signins),
    )
    if await child.wait() != 0:
        raise SystemExit("the load process failed")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--flows", type=int, default=100)
    parser.add_argument("--verifications", type=int, default=5000)
    parser.add_argument("--signins", type=int, default=60)
    parser.add_argument("--client", metavar="ISSUER", help="run only the load against ISSUER (the child process)")
    parser.add_argument("--phase", choices=["tokens", "signins", "flows"], default="tokens")
    args = parser.parse_args()
    if args.client:
        await client(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        nats_server = NatsServer(free_port(), data / "nats").start()
        try:
            url = os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{data / 'identity.db'}"
            # The production password cost (the test helpers lower it to keep the suite fast).
            cost = {k: v.default for k, v in Settings.model_fields.items() if k.startswith("identity_argon2_")}
            settings = identity_settings(nats_server.url, url, data, log_level="WARNING", **cost)
            async with running_identity(settings) as idp:
                print(
                    f"identity at {idp.issuer}, database {url.split(':')[0]}, {os.cpu_count()} CPUs, argon2id {cost}",
                    flush=True,
                )
                # CPU this (server) process spends per grant: robust on a busy machine, unlike tokens/s.
                cpu = time.process_time()
                await load_process(idp.issuer, "tokens", args)
                per_grant = (time.process_time() - cpu) / (args.requests + 20) * 1000
                print(
                    f"  server CPU per client_credentials grant: {per_grant:.2f} ms "
                    f"(= {1000 / per_grant:.0f} grants/s per fully used vCPU)",
                    flush=True,
                )
                cpu = time.process_time()
                await load_process(idp.issuer, "signins", args)
                per_sign_in = (time.process_time() - cpu) / (args.signins + 4) * 1000
                print(
                    f"  server CPU per password sign-in: {per_sign_in:.1f} ms "
                    f"(= {1000 / per_sign_in:.0f} sign-ins/s per fully used vCPU)",
                    flush=True,
                )
                await load_process(idp.issuer, "flows", args)
        finally:
            nats_server.stop()
    load = os.getloadavg()
    print(f"load average (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    asyncio.run(main())
