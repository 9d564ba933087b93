"""Earning benchmark (not a test): event -> points credited latency through the earning contract,
beside raw JetStream publish -> consume in the same run.

    .venv/bin/python bench/earning_bench.py [--events 2000] [--rate 200]

Raw: this process publishes to a JetStream stream and a durable pull consumer in this process
receives and acks each message; latency = consume - publish. Contract: this process publishes
`shop.purchase.completed` (the seller's side) at the same rate; points (its own process,
`python -m points`, on PostgreSQL) consumes it, grants the earning in one transaction with its
inbox row and outbox row, and its relay publishes `points.ledger.credited`; latency = that event
reaching this process - publish. Needs PostgreSQL at BENCH_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import nats
from kizuna.common.v1 import common_pb2
from kizuna.kit.testing import NatsServer, ServiceProcess, TestIssuer, free_port
from kizuna.points.v1 import earning_pb2, events_pb2
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MEMBERS = 1000


def pctl(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000 if ordered else float("nan")


def report(name: str, samples: list[float], expected: int) -> None:
    print(
        f"{name:<34} n={len(samples)}/{expected}  p50 {pctl(samples, 0.5):7.2f} ms  "
        f"p99 {pctl(samples, 0.99):7.2f} ms  max {pctl(samples, 1.0):7.2f} ms",
        flush=True,
    )


async def raw_jetstream(nats_url: str, events: int, rate: float) -> list[float]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BENCHRAW", subjects=["benchraw.>"]))
    sub = await js.pull_subscribe(
        "benchraw.x", durable="bench-raw", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
    )
    sent: dict[str, float] = {}
    latencies: list[float] = []

    async def consume() -> None:
        while len(latencies) < events:
            try:
                msgs = await sub.fetch(16, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                start = sent.get(msg.header["id"])
                if start is not None:  # not one of an earlier run's messages
                    latencies.append(time.perf_counter() - start)

    consumer = asyncio.create_task(consume())
    run = uuid.uuid4().hex[:6]
    for i in range(events):
        key = f"{run}-{i}"
        sent[key] = time.perf_counter()
        await js.publish("benchraw.x", b"x" * 120, headers={"id": key, "Nats-Msg-Id": key})
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(consumer, 60)
    await nc.close()
    return latencies


async def through_contract(nats_url: str, events: int, rate: float) -> list[float]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def credited(msg: nats.aio.msg.Msg) -> None:
        event = events_pb2.Credited.FromString(msg.data)
        # A plain subscriber sees a re-published event again (JetStream's de-duplication keeps
        # it out of the stream, not off the subject): only the first arrival counts.
        start = sent.pop(event.source_ref, None)
        if start is not None:
            latencies.append(time.perf_counter() - start)
            if len(latencies) >= events:
                done.set()

    await nc.subscribe("points.ledger.credited", cb=credited)
    run = uuid.uuid4().hex[:6]
    for i in range(events):
        ref = f"o-{run}-{i}"
        purchase = earning_pb2.Purchase(
            reference=ref,
            member_id=f"bench-{i % MEMBERS}",
            paid=common_pb2.Money(amount_minor=10_000, currency="JPY"),
        )
        payload = earning_pb2.PurchaseCompleted(purchase=purchase).SerializeToString()
        sent[ref] = time.perf_counter()
        await js.publish("shop.purchase.completed", payload, headers={"ce-id": ref, "Nats-Msg-Id": ref})
        await asyncio.sleep(1 / rate)
    try:
        await asyncio.wait_for(done.wait(), 120)
    except TimeoutError:
        pass
    await nc.close()
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200, help="events per second, both phases")
    args = parser.parse_args()
    name = f"earning_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    nats_server = NatsServer(free_port(), Path(tempfile.mkdtemp())).start()
    issuer = TestIssuer().start()
    workdir = Path(tempfile.mkdtemp())
    server = ServiceProcess(
        "points",
        {
            "NATS_URL": nats_server.url,
            "KIZUNA_ISSUER": issuer.issuer,
            "DATABASE_URL": url,
            "KIZUNA_DATA_DIR": str(workdir),
            "LOG_LEVEL": "ERROR",
            "LOG_FORMAT": "text",
            "EXPIRY_INTERVAL_SECONDS": "3600",
        },
        log_path=workdir / "points.log",
    )
    try:
        server.start(timeout=60)
        print(f"points log: {server.log_path}", flush=True)
        conn = await asyncpg.connect(url)
        await conn.execute(f"""INSERT INTO points_wallet (member_id, status, available, held, debt, earn_month,
            earned_this_month, created_at) SELECT 'bench-' || i, 'active', 0, 0, 0, '2025-01', 0, now()
            FROM generate_series(0, {MEMBERS - 1}) i""")
        await conn.close()
        # Warm up both paths (connections, statement caches, consumers created).
        await raw_jetstream(nats_server.url, 50, args.rate)
        await through_contract(nats_server.url, 50, args.rate)
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().delete_consumer("BENCHRAW", "bench-raw")
        await nc.close()
        print(f"{args.events} events at {args.rate:g}/s, points on PostgreSQL, one consumer", flush=True)
        report(
            "raw JetStream publish -> consume",
            await raw_jetstream(nats_server.url, args.events, args.rate),
            args.events,
        )
        report(
            "purchase event -> points credited",
            await through_contract(nats_server.url, args.events, args.rate),
            args.events,
        )
    finally:
        server.stop()
        issuer.stop()
        nats_server.stop()
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
