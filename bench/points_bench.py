"""Points benchmark (not a test): Credit and Reserve+Capture throughput and p99 with 64 concurrent
gRPC clients on PostgreSQL, beside pgbench running the same SQL at the same concurrency;
GetBalance / first page of ListEntries p99 over many members and entries; and (phase "history")
the cost of one Credit, Reserve and GetBalance for a member with 1, 100 and 10,000 lots/entries.

    .venv/bin/python bench/points_bench.py [--seconds 10] [--members 100000] [--entries 1000000]
    .venv/bin/python bench/points_bench.py --only history [--history 1,100,10000]
    .venv/bin/python bench/points_bench.py --only credit1,reserve1   # one client: CPU per call
    .venv/bin/python bench/points_bench.py --only reads --members 1000000 --entries 10000000 --seeded p5
        # P5's size, seeded once (about seven minutes) into the database p5 and kept for the next run

Each phase prints the load average (1 min) before and after it: the machine is shared. The ledger
phases start after 2 s of Credit unmeasured, and each of them and pgbench's after an ANALYZE and a
CHECKPOINT (`settle`): measured on tables analyzed as autovacuum would leave them, and with none
writing out the dirty pages of the one before.

Needs PostgreSQL at BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
and `pgbench` on PATH. The service runs as its own process (`python -m points`), the way production
runs it; the gRPC clients run in this one, and again (phases credit-node, reserve-node and the
GetBalance of reads) from Node (`bench/grpc_load.mjs`, `npm ci` installs @grpc/grpc-js), whose
clients take about half the CPU per call of Python's from the two cores the server shares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from kizuna.common.v1 import common_pb2
from kizuna.kit.auth import call_metadata
from kizuna.kit.testing import NatsServer, ServiceProcess, TestIssuer, free_port
from kizuna.points.v1 import points_pb2 as pb
from kizuna.points.v1 import points_pb2_grpc

from bench.scratch import add_wallets, analyze, checkpoint, create_database, drop_database, named_database

CLIENTS = 64


def pctl(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000 if ordered else float("nan")


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


SERVER_PID = 0  # the service's process, whose CPU time each phase reports


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live children (the workers of a
    service started with KIZUNA_WORKERS), from Linux /proc; 0 where unknown."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and (int(entry.name) == pid or fields[1] == str(pid)):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


BENCH_WALLETS = 1000  # bench-1 ... bench-1000 (`scratch.add_wallets`)


def bench_member(i: int, n: int) -> int:
    """Which bench wallet client `i`'s `n`-th call is for: clients spread over all of them, so few
    calls of one group share a wallet."""
    return (i * 7919 + n) % BENCH_WALLETS + 1


def credit_request(i: int, n: int) -> pb.CreditRequest:
    """Client `i`'s `n`-th Credit: 100 regular points to a bench wallet, under a key of its own."""
    return pb.CreditRequest(
        member_id=f"bench-{bench_member(i, n)}",
        amount=100,
        kind=pb.CREDIT_KIND_REGULAR,
        reason="bench",
        idempotency_key=uuid.uuid4().hex,
    )


async def warm_up(url: str, call: Any, seconds: float = 2.0) -> None:
    """`call` from every client for `seconds`, unmeasured, then `settle`: the service's connections
    open and its statements prepared, then planned again on statistics of tables that hold rows
    (`scratch.analyze`), as autovacuum would leave them on a server that runs it."""
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            await call(i, n)
            n += 1

    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    await settle(url)


async def settle(url: str) -> None:
    """Between two measured phases: ANALYZE (the next phase's statements planned on what the last
    one wrote) and CHECKPOINT (its dirty pages written before, not during, the next)."""
    await analyze(url)
    await checkpoint(url)


async def drive(name: str, seconds: float, call: Any, clients: int = CLIENTS, pid: int | None = None) -> None:
    """Calls per second and latency; also the server's (`pid`, default the service's) CPU time per
    call, which depends far less on what else the shared machine runs than throughput does."""
    pid = SERVER_PID if pid is None else pid
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                await call(i, n)
                latencies.append(time.perf_counter() - start)
            except grpc.aio.AioRpcError:
                errors += 1
            n += 1

    began = time.perf_counter()
    cpu_before = cpu_seconds(pid)
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(pid) - cpu_before
    report(
        name,
        len(latencies),
        errors,
        elapsed,
        (pctl(latencies, 0.5), pctl(latencies, 0.99), max(latencies, default=0) * 1000),
        cpu,
    )


def report(
    name: str, answered: int, errors: int, elapsed: float, ms: tuple[float, float, float], cpu: float, extra: str = ""
) -> None:
    """One phase's line: calls per second, latency p50 / p99 / max (ms), errors, the server's CPU."""
    per_call = cpu / answered * 1000 if answered else float("nan")
    print(
        f"{name:<34} {answered / elapsed:8.0f} ops/s  p50 {ms[0]:6.1f} ms  p99 {ms[1]:6.1f} ms  max {ms[2]:6.1f} ms  "
        f"errors {errors}  server CPU {cpu / elapsed:4.2f} cores, {per_call:5.2f} ms/call{extra}  ({load()} after)",
        flush=True,
    )


ROOT = Path(__file__).resolve().parent.parent
NODE_LOAD = ROOT / "bench" / "grpc_load.mjs"


def node_client_missing() -> str:
    """Why `bench/grpc_load.mjs` cannot run here ('' when it can)."""
    if not shutil.which("node"):
        return "node not found"
    if not (ROOT / "node_modules" / "@grpc" / "grpc-js").exists():
        return "@grpc/grpc-js is not installed: run `npm ci` in the repository root"
    return ""


async def drive_node(
    name: str,
    seconds: float,
    phase: str,
    address: str,
    service: Sequence[tuple[str, str]],
    *,
    on_behalf: dict[str, Sequence[tuple[str, str]]] | None = None,
    members: int = 1000,
    member_prefix: str = "bench-",
    clients: int = CLIENTS,
    pid: int | None = None,
) -> None:
    """`drive`, with the 64 clients in Node (`bench/grpc_load.mjs`) instead of this process: they
    cost the shared machine about half the CPU per call of Python's."""
    missing = node_client_missing()
    if missing:
        print(f"{name:<34} skipped: {missing}", flush=True)
        return
    pid = SERVER_PID if pid is None else pid
    config = {
        "address": address,
        "proto_root": str(ROOT / "proto"),
        "phase": phase,
        "seconds": seconds,
        "clients": clients,
        "channels": 8,
        "members": members,
        "member_prefix": member_prefix,
        "service": list(service),
        "on_behalf": {m: list(md) for m, md in (on_behalf or {}).items()},
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "load.json"
        path.write_text(json.dumps(config))
        cpu_before = cpu_seconds(pid)
        node = await asyncio.create_subprocess_exec(
            "node", str(NODE_LOAD), str(path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(node.communicate(), seconds + 60)
        finally:
            if node.returncode is None:
                node.kill()
                await node.wait()
        cpu = cpu_seconds(pid) - cpu_before
    if node.returncode != 0:
        raise RuntimeError(f"{NODE_LOAD.name} failed: {err.decode()[-2000:]}")
    result = json.loads(out)
    answered, elapsed = result["answered"], result["seconds"]
    client = result["client_cpu"] / answered * 1000 if answered else float("nan")
    report(
        name,
        answered,
        result["failed"],
        elapsed,
        (result["p50"] or float("nan"), result["p99"] or float("nan"), result["max"] or 0.0),
        cpu,
        f", client {client:4.2f} ms/call" + (f"; first error: {result['first_error']}" if result["failed"] else ""),
    )


async def per_transaction(url: str, kind: str, label: str) -> None:
    """A group commit's entries share their transaction's time: entries of `kind` per transaction."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT created_at) AS t FROM points_entry WHERE kind = $1", kind
        )
    finally:
        await conn.close()
    print(f"{'':<34} {row['n'] / max(row['t'], 1):8.1f} {label} per transaction", flush=True)


# A missed idempotency lookup as points makes it: the key is computed once per statement (a scalar
# subquery), so the lookup is an index probe. Written as `key = md5(random()::text)`, the volatile
# function ran per row and every lookup scanned the whole table, slowing pgbench as it grew (200
# tx/s after the gRPC phases against 2,200 on empty tables).
PGBENCH_CREDIT = """
\\set m random(1, 1000)
BEGIN;
SELECT available FROM points_wallet WHERE member_id = 'bench-' || :m FOR UPDATE;
SELECT 1 FROM points_idempotency WHERE caller = 'shop' AND key = (SELECT md5(random()::text));
INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service, source_ref, created_at)
  VALUES (md5(random()::text), 'bench-' || :m, 'credit', 1, 'bench', 'shop', '', now());
INSERT INTO points_posting (entry_pk, account, amount) VALUES (currval('points_entry_id_seq'), 'issued:shop', -1),
  (currval('points_entry_id_seq'), 'member:bench-' || :m || ':available', 1);
INSERT INTO points_lot (member_id, entry_pk, kind, rolling, amount, remaining, clawed_back, source_service,
  expires_at, created_at) VALUES ('bench-' || :m, currval('points_entry_id_seq'), 'regular', true, 1, 1, 0, 'shop',
  now() + interval '12 months', now());
UPDATE points_wallet SET available = available + 1, rolling_expires_at = now() + interval '12 months'
  WHERE member_id = 'bench-' || :m;
INSERT INTO points_idempotency (caller, key, operation, request_hash, response, created_at)
  VALUES ('pgbench', md5(random()::text), 'credit', md5(random()::text), 'x', now());
INSERT INTO kit_outbox (event_id, subject, payload, headers, created_at)
  VALUES (md5(random()::text), 'points.ledger.credited', 'x', '{}', now());
COMMIT;
"""


# One Reserve then its Capture (two transactions, as the two RPCs are), statement for statement
# what points runs for a one-lot reservation: the locking read (wallet + due flags + idempotency
# record), the live lots, the reservation, the lot, the hold, the entry and its postings, the
# wallet, the idempotency record and the outbox row; then the capture's reads and writes.
PGBENCH_RESERVE_CAPTURE = """
\\set m random(1, 1000)
BEGIN;
SELECT w.available, EXISTS (SELECT 1 FROM points_reservation r WHERE r.member_id = w.member_id
    AND r.status = 'open' AND r.expires_at <= now()) AS due_r,
  EXISTS (SELECT 1 FROM points_lot l WHERE l.member_id = w.member_id AND l.remaining > 0
    AND l.expires_at <= now()) AS due_l, i.operation
  FROM points_wallet w LEFT JOIN points_idempotency i ON i.caller = 'pgbench' AND i.key = (SELECT md5(random()::text))
  WHERE w.member_id = 'bench-' || :m FOR UPDATE OF w;
SELECT id, kind, remaining, expires_at FROM points_lot
  WHERE member_id = 'bench-' || :m AND remaining > 0 AND expires_at > now();
INSERT INTO points_reservation (reservation_id, member_id, caller, amount, status, reason, source_service,
  source_ref, captured, refunded, created_at, expires_at) VALUES (md5(random()::text), 'bench-' || :m,
  'pgbench', 1, 'open', 'bench', 'shop', '', 0, 0, now(), now() + interval '15 minutes') RETURNING id AS rsv \\gset
UPDATE points_lot SET remaining = remaining - 1 WHERE id = (SELECT id FROM points_lot
  WHERE member_id = 'bench-' || :m AND remaining > 0 AND expires_at > now() ORDER BY expires_at LIMIT 1)
  RETURNING id AS lot \\gset
INSERT INTO points_hold (reservation_pk, lot_id, seq, amount, captured, refunded) VALUES (:rsv, :lot, 0, 1, 0, 0);
INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service, source_ref, created_at)
  VALUES (md5(random()::text), 'bench-' || :m, 'hold', 0, 'bench', 'shop', '', now()) RETURNING id AS e1 \\gset
INSERT INTO points_posting (entry_pk, account, amount) VALUES (:e1, 'member:bench-' || :m || ':available', -1),
  (:e1, 'member:bench-' || :m || ':held', 1);
UPDATE points_wallet SET available = available - 1, held = held + 1 WHERE member_id = 'bench-' || :m;
INSERT INTO points_idempotency (caller, key, operation, request_hash, response, created_at)
  VALUES ('pgbench', md5(random()::text), 'reserve', md5(random()::text), 'x', now());
INSERT INTO kit_outbox (event_id, subject, payload, headers, created_at)
  VALUES (md5(random()::text), 'points.ledger.reserved', 'x', '{}', now());
COMMIT;
BEGIN;
SELECT w.available, i.operation FROM points_wallet w
  LEFT JOIN points_idempotency i ON i.caller = 'pgbench' AND i.key = (SELECT md5(random()::text))
  WHERE w.member_id = (SELECT member_id FROM points_reservation WHERE id = :rsv) FOR UPDATE OF w;
SELECT * FROM points_reservation WHERE id = :rsv;
SELECT h.lot_id, h.amount, l.expires_at FROM points_hold h JOIN points_lot l ON l.id = h.lot_id
  WHERE h.reservation_pk = :rsv ORDER BY h.seq;
UPDATE points_hold SET captured = 1 WHERE reservation_pk = :rsv AND lot_id = :lot;
INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service, source_ref, created_at)
  VALUES (md5(random()::text), 'bench-' || :m, 'spend', -1, 'bench', 'shop', '', now()) RETURNING id AS e2 \\gset
INSERT INTO points_posting (entry_pk, account, amount) VALUES (:e2, 'member:bench-' || :m || ':held', -1),
  (:e2, 'redeemed:shop', 1);
UPDATE points_reservation SET status = 'captured', captured = 1, capture_entry_id = md5(random()::text)
  WHERE id = :rsv;
UPDATE points_wallet SET held = held - 1 WHERE member_id = 'bench-' || :m;
INSERT INTO points_idempotency (caller, key, operation, request_hash, response, created_at)
  VALUES ('pgbench', md5(random()::text), 'capture', md5(random()::text), 'x', now());
INSERT INTO kit_outbox (event_id, subject, payload, headers, created_at)
  VALUES (md5(random()::text), 'points.ledger.captured', 'x', '{}', now());
COMMIT;
"""


def pgbench(url: str, seconds: int, label: str, sql: str) -> None:
    if not shutil.which("pgbench"):
        print("pgbench not found; skipped")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(sql)
    clients = CLIENTS
    while True:
        out = subprocess.run(
            ["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-r", "-f", script.name, url],
            capture_output=True,
            text=True,
        )
        # The server's connection slots are shared with whatever else runs: fewer clients, said so.
        if "too many clients" not in out.stderr or clients <= 8:
            break
        clients //= 2
        label = f"{label} ({clients} clients)"
    tps = re.search(r"tps = ([\d.]+)", out.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    print(
        f"{label:<34} {float(tps.group(1)) if tps else float('nan'):8.0f} tx/s   "
        f"avg {lat.group(1) if lat else '?'} ms, failed {failed.group(1) if failed else '?'} "
        "(pgbench reports no p99 without -l)"
    )
    if not tps:
        print(out.stdout[-2000:], out.stderr[-2000:])
    Path(script.name).unlink()


async def seed(url: str, members: int, entries: int) -> bool:
    """Seed `members` wallets and `entries` entries with a rolling lot each; False when a kept
    database (--seeded) already holds them."""
    conn = await asyncpg.connect(url)
    try:
        per = max(entries // members, 1)
        seeded = await conn.fetchval("SELECT count(*) FROM points_wallet WHERE member_id LIKE 'seed-%'")
        if seeded:  # a kept database (--seeded): measured as it is, if it is the size asked for
            entries_seeded = await conn.fetchval("SELECT count(*) FROM points_entry WHERE entry_id LIKE 'seed-%'")
            if (seeded, entries_seeded) != (members, per * members):
                raise SystemExit(f"the kept database holds {seeded} members / {entries_seeded} entries: drop it")
            return False
        await conn.execute(
            """
            INSERT INTO points_wallet (member_id, status, available, held, debt, earn_month, earned_this_month,
              rolling_expires_at, created_at)
            SELECT 'seed-' || i, 'active', 0, 0, 0, '2025-01', 0, now() + interval '300 days', now()
            FROM generate_series(1, $1) i""",
            members,
        )
        await conn.execute(
            """
            INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service, source_ref,
              created_at)
            SELECT 'seed-' || i, 'seed-' || (i % $1 + 1), 'credit', 1, 'seed', 'shop', '', now()
            FROM generate_series(1, $2) i""",
            members,
            per * members,
        )
        await conn.execute("""
            INSERT INTO points_lot (member_id, entry_pk, kind, rolling, amount, remaining, clawed_back, source_service,
              expires_at, created_at)
            SELECT member_id, id, 'regular', true, 1, 1, 0, 'shop', now() + interval '300 days', now()
            FROM points_entry WHERE entry_id LIKE 'seed-%'""")
        # The wallet's balance (and, where the schema keeps it, its points in rolling lots).
        rolling = ", rolling_points = c.n" if await _has_column(conn, "points_wallet", "rolling_points") else ""
        await conn.execute(f"""
            UPDATE points_wallet w SET available = c.n{rolling} FROM (SELECT member_id, count(*) n FROM points_lot
            WHERE member_id LIKE 'seed-%' GROUP BY member_id) c WHERE w.member_id = c.member_id""")
        # As autovacuum would leave it: the UPDATE above left a dead version of every wallet beside
        # the live one, and no page of the new rows had its hint bits set (the measured reads
        # would write them, and autovacuum would start on the tables while they are measured).
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()
    return True


async def _has_column(conn: asyncpg.Connection, table: str, column: str) -> bool:
    """Whether the service's schema has the column (the bench also runs trees from before it)."""
    found = await conn.fetchval(
        "SELECT 1 FROM information_schema.columns WHERE table_name = $1 AND column_name = $2", table, column
    )
    return found is not None


async def seed_history(url: str, sizes: list[int]) -> dict[int, list[str]]:
    """Members with exactly n rolling lots and n credit entries each, for every n in sizes (100
    members per size up to 100 lots, 20 above): one call per member, so no call sees the lot an
    earlier call of the phase added."""
    conn = await asyncpg.connect(url)
    members: dict[int, list[str]] = {}
    try:
        for n in sizes:
            count = 100 if n <= 100 else 20
            names = [f"hist-{n}-{k}" for k in range(count)]
            members[n] = names
            await conn.execute(
                """INSERT INTO points_wallet (member_id, status, available, held, debt, earn_month,
                  earned_this_month, rolling_expires_at, created_at)
                SELECT m, 'active', 1000 * $2::bigint, 0, 0, '2025-01', 0, now() + interval '300 days', now()
                FROM unnest($1::text[]) m""",
                names,
                n,
            )
            if await _has_column(conn, "points_wallet", "rolling_points"):
                await conn.execute(
                    "UPDATE points_wallet SET rolling_points = available WHERE member_id = ANY($1::text[])", names
                )
            await conn.execute(
                """INSERT INTO points_entry (entry_id, member_id, kind, amount, explanation, source_service,
                  source_ref, created_at)
                SELECT 'h-' || m || '-' || i, m, 'credit', 1000, 'seed', 'shop', '', now()
                FROM unnest($1::text[]) m, generate_series(1, $2) i""",
                names,
                n,
            )
            await conn.execute(
                """INSERT INTO points_lot (member_id, entry_pk, kind, rolling, amount, remaining, clawed_back,
                  source_service, expires_at, created_at)
                SELECT member_id, id, 'regular', true, 1000, 1000, 0, 'shop', now() + interval '300 days', now()
                FROM points_entry WHERE member_id = ANY($1::text[])""",
                names,
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return members


async def one_at_a_time(name: str, members: list[str], call: Any) -> None:
    """One call per member, one at a time: the cost of a single call, not queueing."""
    latencies = []
    before = load()
    for member in members:
        start = time.perf_counter()
        await call(member)
        latencies.append(time.perf_counter() - start)
    mean = sum(latencies) / len(latencies) * 1000
    print(
        f"{name:<34} n={len(latencies):<4} mean {mean:6.1f} ms  p50 {pctl(latencies, 0.5):6.1f} ms  "
        f"max {max(latencies) * 1000:6.1f} ms  ({before} before, {load()} after)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument(
        "--only", default="credit,reserve,credit-node,reserve-node,pgbench,reads,history", help="phases to run"
    )
    parser.add_argument("--history", default="1,100,10000", help="lots/entries per member, phase history")
    parser.add_argument(
        "--seeded",
        metavar="NAME",
        help="phase reads: seed the database NAME once (created if missing) and keep it, so that the next "
        "run with the same NAME and sizes measures at once (the same schema: a tree of other migrations needs its own)",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if args.seeded and "history" in only:
        parser.error("--seeded keeps the database: phase history seeds members of its own each run")
    if args.seeded:
        name, url = args.seeded, await named_database(args.seeded)
    else:
        name, url = await create_database("points_bench")
    workdir = Path(tempfile.mkdtemp(prefix="points-bench-"))
    nats_server = NatsServer(free_port(), workdir / "nats").start()
    issuer = TestIssuer().start()
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
        free_port(),
        free_port(),
        workdir / "points.log",
    )
    try:
        server.start(timeout=60)
        assert server.process is not None
        print(f"server pid {server.process.pid}, bench pid {os.getpid()}", flush=True)
        global SERVER_PID
        SERVER_PID = server.process.pid
        await add_wallets(url, 1000)
        svc = call_metadata(issuer.service_token("shop", "points:credit points:spend points:read"))
        member_meta = {
            i: call_metadata(
                issuer.service_token("shop", "points:credit points:spend points:read"),
                issuer.member_token(f"bench-{i}", expires_in=3600),
            )
            for i in range(1, 1001)
        }
        # Eight connections: each channel its own subchannel pool, or gRPC shares one connection
        # among channels to the same address (and every call reaches one of KIZUNA_WORKERS).
        channels = [
            grpc.aio.insecure_channel(server.grpc_address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(8)
        ]
        stubs = [points_pb2_grpc.PointsServiceStub(c) for c in channels]
        print(f"PostgreSQL, {CLIENTS} concurrent clients, {args.seconds:.0f}s each; {load()} at the start")

        async def credit(i: int, n: int) -> None:
            await stubs[i % 8].Credit(credit_request(i, n), metadata=svc, timeout=30)

        async def reserve_capture(i: int, n: int) -> None:
            m = bench_member(i, n)
            held = await stubs[i % 8].Reserve(
                pb.ReserveRequest(member_id=f"bench-{m}", amount=1, idempotency_key=uuid.uuid4().hex),
                metadata=member_meta[m],
                timeout=30,
            )
            await stubs[i % 8].Capture(
                pb.CaptureRequest(reservation_id=held.reservation_id, idempotency_key=uuid.uuid4().hex),
                metadata=svc,
                timeout=30,
            )

        # Every member gets points first: Reserve+Capture spends them, and Credit is measured on
        # tables that hold rows, analyzed (`scratch.analyze`), as a running service's would be.
        if only & {"credit", "reserve", "credit-node", "reserve-node", "credit1", "reserve1", "pgbench"}:
            for first in range(1, 1001, 100):
                await asyncio.gather(*(credit(i, 0) for i in range(first, first + 100)))
            await warm_up(url, credit)
        if "credit" in only:
            await drive("Credit (gRPC)", args.seconds, credit)
            await per_transaction(url, "credit", "credits")
            await settle(url)
        if "reserve" in only:
            await drive("Reserve+Capture (gRPC)", args.seconds, reserve_capture)
            await per_transaction(url, "spend", "captures")
            await settle(url)
        # The same calls from Node's clients, which leave the server more of the machine.
        if "credit-node" in only:
            await drive_node("Credit (gRPC, Node clients)", args.seconds, "credit", server.grpc_address, svc)
            await settle(url)
        if "reserve-node" in only:
            await drive_node(
                "Reserve+Capture (gRPC, Node clients)",
                args.seconds,
                "reserve_capture",
                server.grpc_address,
                svc,
                on_behalf={f"bench-{i}": md for i, md in member_meta.items()},
            )
            await settle(url)
        # One call at a time: CPU per call with the least contention (context switches, waiting
        # connections), which moves less with the shared machine's load than 64 clients do.
        if "credit1" in only:
            await drive("Credit (gRPC, 1 client)", args.seconds, credit, clients=1)
        if "reserve1" in only:
            await drive("Reserve+Capture (gRPC, 1 client)", args.seconds, reserve_capture, clients=1)
        if "pgbench" in only:
            pgbench(url, int(args.seconds), "pgbench, same Credit SQL", PGBENCH_CREDIT)
            await settle(url)
            pgbench(url, int(args.seconds), "pgbench, same Reserve+Capture SQL", PGBENCH_RESERVE_CAPTURE)
        if "history" in only:
            sizes = [int(n) for n in args.history.split(",")]
            began = time.perf_counter()
            by_size = await seed_history(url, sizes)
            print(f"seeded members with {args.history} lots/entries in {time.perf_counter() - began:.0f}s")

            async def balance_of(member: str) -> None:
                await stubs[0].GetBalance(pb.GetBalanceRequest(member_id=member), metadata=svc, timeout=60)

            spend_token = issuer.service_token("shop", "points:credit points:spend points:read")
            metas = {
                m: call_metadata(spend_token, issuer.member_token(m, expires_in=3600))
                for names in by_size.values()
                for m in names
            }

            async def reserve_one(member: str) -> None:
                request = pb.ReserveRequest(member_id=member, amount=1, idempotency_key=uuid.uuid4().hex)
                await stubs[0].Reserve(request, metadata=metas[member], timeout=60)

            async def credit_one(member: str) -> None:
                request = pb.CreditRequest(
                    member_id=member,
                    amount=100,
                    kind=pb.CREDIT_KIND_REGULAR,
                    reason="bench",
                    idempotency_key=uuid.uuid4().hex,
                )
                await stubs[0].Credit(request, metadata=svc, timeout=60)

            for n in sizes:
                await balance_of(by_size[n][0])  # warm the path once
                await one_at_a_time(f"GetBalance, {n} lots", by_size[n], balance_of)
                await one_at_a_time(f"Reserve, {n} lots", by_size[n], reserve_one)
                await one_at_a_time(f"Credit, {n} lots", by_size[n], credit_one)
        if "reads" not in only:
            return

        began = time.perf_counter()
        if await seed(url, args.members, args.entries):
            print(f"seeded {args.members} members / {args.entries} entries in {time.perf_counter() - began:.0f}s")
        else:
            print(f"{name} already holds {args.members} members / {args.entries} entries: measured as they are")
        # A token minted now: seeding 10M entries outlasts the one minted at the start.
        svc = call_metadata(issuer.service_token("shop", "points:credit points:spend points:read"))

        async def get_balance(i: int, n: int) -> None:
            await stubs[i % 8].GetBalance(
                pb.GetBalanceRequest(member_id=f"seed-{(i * 104729 + n * 31) % args.members + 1}"),
                metadata=svc,
                timeout=30,
            )

        async def first_page(i: int, n: int) -> None:
            await stubs[i % 8].ListEntries(
                pb.ListEntriesRequest(
                    member_id=f"seed-{(i * 104729 + n * 31) % args.members + 1}",
                    page=common_pb2.PageRequest(page_size=20),
                ),
                metadata=svc,
                timeout=30,
            )

        await drive("GetBalance", args.seconds, get_balance)
        await drive_node(
            "GetBalance (Node clients)",
            args.seconds,
            "balance",
            server.grpc_address,
            svc,
            members=args.members,
            member_prefix="seed-",
        )
        await drive("ListEntries first page", args.seconds, first_page)
        # Latency of one call at a time, without 64 clients queueing behind each other.
        await drive("GetBalance (1 client)", args.seconds, get_balance, clients=1)
        await drive("ListEntries first page (1 client)", args.seconds, first_page, clients=1)
        for channel in channels:
            await channel.close()
    finally:
        server.stop()
        issuer.stop()
        nats_server.stop()
        if not args.seeded:
            await drop_database(name)
        if sys.exc_info()[0] is None:  # a failed run keeps its server's log
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
