"""Platform numbers: `make up` to all-ready, idle RSS per service, and outbox -> consumer latency
beside raw JetStream publish -> consume, measured in the same run.

    .venv/bin/python bench/platform_bench.py [--events 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import nats
from kizuna.identity.v1 import events_pb2
from kizuna.kit import declaration, migrations
from kizuna.kit.db import Database
from kizuna.kit.events import Consumer, ConsumerWorker, Event, OutboxRelay, ensure_stream, publish
from kizuna.kit.testing import NatsServer, free_port
from sqlmodel.ext.asyncio.session import AsyncSession

ROOT = Path(__file__).resolve().parents[1]
SERVICES = [d.name for d in declaration.discover()]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bench_make_up() -> None:
    data = Path(tempfile.mkdtemp(prefix="kizuna-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "KIZUNA_ISSUER", "DATABASE_URL")}
    env.update(KIZUNA_PORT_OFFSET="7000", KIZUNA_DATA_DIR=str(data))
    for label in ("first start (migrations)", "restart (migrated)"):
        start = time.monotonic()
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "up"],  # installed already: make checks its stamp, then runs the stack
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if "services ready in" in line:
                print(f"make up -> all ready, {label}: {time.monotonic() - start:.1f} s ({line.strip()})")
                break
        else:
            print(f"make up did not become ready ({label})")
        time.sleep(3)  # let them idle
        if label.startswith("first"):
            rss = idle_rss(str(data))
            for name in SERVICES:
                print(f"idle RSS {name:<9} {rss.get(name, float('nan')):6.1f} MB")
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)


def idle_rss(marker: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"-m" in argv:
            at = argv.index(b"-m")
            name = argv[at + 1].decode()
            command = argv[at + 2] if len(argv) > at + 2 else b""
            # Only the serving processes: a `python -m <service> seed` still running is not idle.
            if name in SERVICES and command in (b"", b"serve"):
                kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
                result[name] = kb / 1024
    return result


async def bench_latency(events: int, database_url: str, label: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kizuna-nats-"))
    server = NatsServer(free_port(), tmp).start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_stream(js, "bench")

        # Raw JetStream: publish -> a pull consumer fetches it.
        sub = await js.pull_subscribe("bench.raw.sent", durable="bench-raw")
        raw = []
        for i in range(events):
            t0 = time.perf_counter()
            await js.publish("bench.raw.sent", b"x", headers={"Nats-Msg-Id": f"raw-{i}"})
            [msg] = await sub.fetch(1, timeout=5)
            await msg.ack()
            raw.append((time.perf_counter() - t0) * 1000)

        # The kit's path: commit (business row + outbox) -> relay -> JetStream -> consumer (+ inbox).
        await asyncio.to_thread(migrations.upgrade, database_url, ROOT / "libs/kit/tests/demo/migrations")
        db = Database(database_url)
        seen: dict[str, float] = {}
        arrived = asyncio.Event()

        async def handler(session: AsyncSession, event: Event) -> None:
            seen[event.id] = time.perf_counter()
            arrived.set()

        relay = OutboxRelay(db, js, source="kizuna/bench", poll_seconds=1.0)
        relay_task = asyncio.create_task(relay.run())
        worker = ConsumerWorker(Consumer("bench-latency", ["bench.note.created"], handler), db, js)
        await worker.subscribe()
        worker_task = asyncio.create_task(worker.run())
        kit = []
        for _ in range(events):
            arrived.clear()
            t0 = time.perf_counter()
            async with db.transaction() as session:
                event_id = publish(session, "bench.note.created", events_pb2.MemberRegistered(member_id="m"))
            while event_id not in seen:
                await asyncio.wait_for(arrived.wait(), 10)
                arrived.clear()
            kit.append((seen[event_id] - t0) * 1000)
        worker.stop()
        relay.stop()
        await asyncio.gather(worker_task, relay_task)
        await db.dispose()
        await nc.close()
        print(f"raw JetStream publish->consume ({events}): p50 {pct(raw, 50):.2f} ms  p99 {pct(raw, 99):.2f} ms")
        print(
            f"outbox->consumer on {label} ({events}): p50 {pct(kit, 50):.2f} ms  p99 {pct(kit, 99):.2f} ms"
            f"  (mean {statistics.mean(kit):.2f} ms; includes the commit)"
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--skip-up", action="store_true")
    args = parser.parse_args()
    if not args.skip_up:
        bench_make_up()
    sqlite = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='kizuna-db-')}/bench.db"
    asyncio.run(bench_latency(args.events, sqlite, "SQLite"))
    pg = os.environ.get("KIZUNA_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    try:
        asyncio.run(bench_pg(args.events, pg))
    except OSError as exc:
        print(f"PostgreSQL not reachable ({exc}); skipped the PostgreSQL latency run")


async def bench_pg(events: int, admin_url: str) -> None:
    import asyncpg

    name = f"kizuna_bench_{os.getpid()}"
    plain = admin_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        await bench_latency(events, admin_url.rsplit("/", 1)[0] + f"/{name}", "PostgreSQL")
    finally:
        conn = await asyncpg.connect(plain)
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.close()


if __name__ == "__main__":
    main()
