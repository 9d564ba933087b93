"""Earning benchmark (not a test): event -> points credited latency through the earning contract,
beside raw JetStream publish -> consume in the same run.

    .venv/bin/python bench/earning_bench.py [--events 300] [--rate 10] [--rounds 2] [--baseline REV]
        [--variant NAME:VAR=VALUE ...]

Raw: this process publishes to a JetStream stream and a durable pull consumer in this process
receives and acks each message; latency = consume - publish. Contract: this process publishes
`shop.purchase.completed` (the seller's side, with the headers the kit's outbox gives it) at the
same rate; points (its own process, `python -m points`, on PostgreSQL) consumes it, grants the
earning in one transaction with its inbox row and outbox row, and its relay publishes
`points.ledger.credited`; latency = that event reaching this process - publish.

Each round measures raw, then the contract through each points tree, one after another (in the
opposite order every other round: the first of a round can be measured slower for it), and prints
the load average and the points process's CPU time per event (which a busy machine changes less
than latency) beside them: goal P4 is contract p99 <= 2 x raw p99 + 5 ms. `--baseline REV` adds
points as of a git revision (its kit and points sources, exported with `git archive`) to every
round, on its own NATS server and database; `--variant NAME:VAR=VALUE[,VAR=VALUE]` adds this tree
again with those environment variables (a setting measured against itself in the same run). Needs
PostgreSQL at BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nats
from kizuna.common.v1 import common_pb2
from kizuna.kit.testing import NatsServer, ServiceProcess, TestIssuer, free_port
from kizuna.points.v1 import earning_pb2, events_pb2
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from bench.baseline import export_baseline
from bench.scratch import add_wallets, create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = 1000


def pctl(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000 if ordered else float("nan")


def cpu_seconds(process: ServiceProcess | None) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        assert process is not None and process.process is not None
        stat = Path(f"/proc/{process.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (AssertionError, OSError):
        return float("nan")
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def load() -> float:
    return os.getloadavg()[0]


def line(name: str, samples: list[float], expected: int, extra: str = "") -> str:
    return (
        f"{name:<30} n={len(samples)}/{expected}  p50 {pctl(samples, 0.5):7.2f} ms  "
        f"p99 {pctl(samples, 0.99):8.2f} ms  max {pctl(samples, 1.0):8.2f} ms{extra}"
    )


def goal(raw: list[float]) -> float:
    """P4: 2 x raw p99 + 5 ms."""
    return 2 * pctl(raw, 0.99) + 5


async def raw_jetstream(nats_url: str, events: int, rate: float) -> list[float]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BENCHRAW", subjects=["benchraw.>"]))
    durable = f"bench-raw-{uuid.uuid4().hex[:6]}"  # from the stream's end: a fresh consumer per phase
    sub = await js.pull_subscribe(
        "benchraw.x",
        durable=durable,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW),
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
                start = sent.get((msg.header or {})["id"])
                if start is not None:
                    latencies.append(time.perf_counter() - start)

    consumer = asyncio.create_task(consume())
    run = uuid.uuid4().hex[:6]
    for i in range(events):
        key = f"{run}-{i}"
        sent[key] = time.perf_counter()
        await js.publish("benchraw.x", b"x" * 120, headers={"id": key, "Nats-Msg-Id": key})
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(consumer, 60)
    await js.delete_consumer("BENCHRAW", durable)
    await nc.close()
    return latencies


# Where an event's time goes, from the clock times the credited event carries (one machine, one
# clock): publish -> the handler's start (its `credited_at`: the inbound hop, the fetch, BEGIN and
# the inbox row), -> the outbox row staged (its `ce-time`: the handler's statements up to it), ->
# this process receiving it (the rest of the transaction, COMMIT, the relay's publish, delivery).
SEGMENTS = ("to handler", "handler to outbox", "outbox to here")


async def through_contract(
    nats_url: str, events: int, rate: float, segments: dict[str, list[float]] | None = None
) -> list[float]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sent: dict[str, tuple[float, float]] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def credited(msg: Msg) -> None:
        arrived, arrived_at = time.perf_counter(), time.time()
        event = events_pb2.Credited.FromString(msg.data)
        # A plain subscriber sees a re-published event again (JetStream's de-duplication keeps
        # it out of the stream, not off the subject): only the first arrival counts.
        start = sent.pop(event.source_ref, None)
        if start is not None:
            latencies.append(arrived - start[0])
            if segments is not None:
                handler = event.credited_at.ToDatetime(UTC).timestamp()
                staged = datetime.fromisoformat((msg.headers or {})["ce-time"]).timestamp()
                for name, seconds in zip(
                    SEGMENTS, (handler - start[1], staged - handler, arrived_at - staged), strict=True
                ):
                    segments.setdefault(name, []).append(seconds)
            if len(latencies) >= events:
                done.set()

    await nc.subscribe("points.ledger.credited", cb=credited)
    run = uuid.uuid4().hex[:6]
    for i in range(events):
        ref = f"o-{run}-{i}"
        member = f"bench-{i % MEMBERS}"
        purchase = earning_pb2.Purchase(
            reference=ref, member_id=member, paid=common_pb2.Money(amount_minor=10_000, currency="JPY")
        )
        payload = earning_pb2.PurchaseCompleted(purchase=purchase).SerializeToString()
        sent[ref] = (time.perf_counter(), time.time())
        # As the seller's outbox publishes it: the event id, and the member as `ce-subject`.
        headers = {"ce-id": ref, "Nats-Msg-Id": ref, "ce-subject": member}
        await js.publish("shop.purchase.completed", payload, headers=headers)
        await asyncio.sleep(1 / rate)
    try:
        await asyncio.wait_for(done.wait(), 120)
    except TimeoutError:
        pass
    await nc.close()
    return latencies


@dataclass
class Variant:
    """One points tree, with its own NATS server, database and process."""

    name: str
    source: Path | None
    environment: dict[str, str] = field(default_factory=dict)
    database: str = ""
    nats_server: NatsServer | None = None
    process: ServiceProcess | None = None
    samples: list[float] = field(default_factory=list)

    async def start(self, issuer: TestIssuer, workdir: Path) -> None:
        self.database, url = await create_database("earning_bench")
        home = workdir / self.name.replace("@", "-")
        (home / "nats").mkdir(parents=True)
        self.nats_server = NatsServer(free_port(), home / "nats").start()
        env = {
            "NATS_URL": self.nats_server.url,
            "KIZUNA_ISSUER": issuer.issuer,
            "DATABASE_URL": url,
            "KIZUNA_DATA_DIR": str(home),
            "LOG_LEVEL": "ERROR",
            "LOG_FORMAT": "text",
            "EXPIRY_INTERVAL_SECONDS": "3600",
        }
        env.update(self.environment)
        if self.source is not None:
            sources = [self.source / "libs" / "kit" / "src", self.source / "services" / "points" / "src"]
            env["PYTHONPATH"] = os.pathsep.join(str(path) for path in sources)
        self.process = ServiceProcess("points", env, log_path=home / "points.log")
        self.process.start(timeout=120)
        await add_wallets(url, MEMBERS, first=0)
        # Warm up: connections, statement caches, the durable consumer created.
        await through_contract(self.nats_server.url, 50, 20)

    async def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.nats_server is not None:
            self.nats_server.stop()
        if self.database:
            await drop_database(self.database)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300, help="events per phase")
    parser.add_argument("--rate", type=float, default=10, help="events per second, every phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", metavar="REV", help="also measure points (and its kit) as of this revision")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE[,VAR=VALUE]",
        help="also measure this tree with these environment variables (repeatable)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="earning-bench-"))
    variants = [Variant("tree", None)]
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        pairs = (item.partition("=") for item in assignments.split(",") if item)
        variants.append(Variant(name, None, {key: value for key, _, value in pairs}))
    if args.baseline:
        variants.insert(
            0, Variant(f"points@{args.baseline}", export_baseline(args.baseline, workdir / "baseline", "points"))
        )
    issuer = TestIssuer().start()
    raw_samples: list[float] = []
    try:
        for variant in variants:
            await variant.start(issuer, workdir)
        print(f"logs under {workdir} (kept if the run fails)", flush=True)
        assert variants[0].nats_server is not None
        await raw_jetstream(variants[0].nats_server.url, 50, 20)
        print(f"{args.events} events at {args.rate:g}/s per phase, points on PostgreSQL", flush=True)
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}", flush=True)
            at = load()
            raw = await raw_jetstream(variants[0].nats_server.url, args.events, args.rate)
            raw_samples += raw
            print(line("  raw JetStream", raw, args.events, f"  load {at:.1f}"), flush=True)
            # Every other round in the opposite order: whichever runs first in a round can be
            # measured slower for it (bench/README.md), and alternating cancels that out.
            for variant in variants if round_ % 2 else variants[::-1]:
                assert variant.nats_server is not None
                at, cpu = load(), cpu_seconds(variant.process)
                segments: dict[str, list[float]] = {}
                samples = await through_contract(variant.nats_server.url, args.events, args.rate, segments)
                cpu_ms = (cpu_seconds(variant.process) - cpu) * 1000 / args.events
                variant.samples += samples
                ratio = pctl(samples, 0.99) / goal(raw)
                extra = f"  load {at:.1f}  goal {goal(raw):.1f} ms  p99/goal {ratio:.2f}  CPU {cpu_ms:.1f} ms/event"
                print(line(f"  contract {variant.name}", samples, args.events, extra), flush=True)
                parts = ", ".join(
                    f"{name} {pctl(segments.get(name, []), 0.5):.2f} / {pctl(segments.get(name, []), 0.99):.2f}"
                    for name in SEGMENTS
                )
                print(f"    p50 / p99 ms: {parts}", flush=True)
        print(f"all rounds (load now {load():.1f})", flush=True)
        print(line("  raw JetStream", raw_samples, args.events * args.rounds), flush=True)
        for variant in variants:
            ratio = pctl(variant.samples, 0.99) / goal(raw_samples)
            extra = f"  goal {goal(raw_samples):.1f} ms  p99/goal {ratio:.2f}"
            print(line(f"  contract {variant.name}", variant.samples, args.events * args.rounds, extra), flush=True)
    finally:
        for variant in variants:
            await variant.stop()
        issuer.stop()
        if sys.exc_info()[0] is None:  # a failed run keeps its logs
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
