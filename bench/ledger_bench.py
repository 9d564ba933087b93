"""The credit group's own CPU, in one process (not a test).

    .venv/bin/python -m bench.ledger_bench [--seconds 6] [--rounds 4] [--clients 16] [--baseline REV]

points runs inside a child process (the kit's `service.running`, as its tests run it) on a fresh
PostgreSQL database, with its own NATS server, its outbox relay publishing every credited event.
16 tasks (`--clients`) in that process hand Credits straight to its credit groups, as the gRPC
method does after the token check: no gRPC, no client in another process. Sixteen make groups of
sixteen, about what 64 gRPC clients give (`points_bench.py`: 15-19 credits per transaction). What
is left is what a Credit costs points itself (the group's statements, the idempotency records, the
events and their relay), and the child's CPU time per credit measures it with far less noise than
`points_bench.py`, whose server shares two cores with 64 gRPC clients. `--baseline REV` runs the
same as of a git revision (its kit and points sources, exported with `git archive`), rounds
alternating which goes first. Needs PostgreSQL at BENCH_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.baseline import export_baseline
from bench.points_bench import BENCH_WALLETS, credit_request
from bench.scratch import add_wallets, analyze, create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent


async def measure(url: str, seconds: float, clients: int) -> dict[str, Any]:
    """In the child: points in this process, `clients` tasks crediting for `seconds` after a warm-up."""
    from kizuna.kit.testing import NatsServer, TestIssuer, free_port
    from opentelemetry import context as otel_context
    from points.group_commit import CreditCall, CreditGroups
    from points.ledger import REGULAR
    from points.service import service
    from points.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    nats_server = NatsServer(free_port(), workdir / "nats").start()
    issuer = TestIssuer().start()
    try:
        settings = Settings(
            nats_url=nats_server.url,
            kizuna_issuer=issuer.issuer,
            database_url=url,
            http_port=0,
            grpc_port=0,
            log_level="ERROR",
            log_format="text",
            expiry_interval_seconds=3600,
            kizuna_client_secret="ledger-bench-secret",
        )
        async with service.running(settings) as runtime:
            await add_wallets(url, BENCH_WALLETS)
            groups = runtime.state["credit_groups"]
            assert isinstance(groups, CreditGroups)
            done = 0
            stop = False

            async def client(i: int) -> None:
                nonlocal done
                n = 0
                while not stop:
                    n += 1
                    request = credit_request(i, n)
                    call = CreditCall("shop", "shop", request, REGULAR, None, otel_context.get_current())
                    if await groups.submit(call) is None:
                        raise RuntimeError("a bench credit was left to run alone")
                    done += 1

            tasks = [asyncio.create_task(client(i)) for i in range(clients)]
            await asyncio.sleep(1.0)  # warm-up: connections opened, statements prepared
            await analyze(url)  # then planned again on tables that hold rows (`scratch.analyze`)
            done_before, groups_before = done, groups.groups
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
            credits, committed = done - done_before, groups.groups - groups_before
            stop = True
            await asyncio.gather(*tasks)
            return {
                "credits_per_second": credits / wall,
                "cpu_ms_per_credit": cpu / credits * 1000,
                "cores": cpu / wall,
                "group": credits / committed if committed else 0.0,
            }
    finally:
        issuer.stop()
        nats_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run_child(label: str, source: Path | None, seconds: float, clients: int) -> dict[str, Any]:
    """One measurement in a fresh child process on a fresh database."""

    async def database() -> tuple[str, str]:
        return await create_database("ledger_bench")

    name, url = asyncio.run(database())
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(str(source / path) for path in ("libs/kit/src", "services/points/src"))
    try:
        argv = [sys.executable, "-m", "bench.ledger_bench", "--child", url, "--seconds", str(seconds)]
        child = subprocess.run(
            [*argv, "--clients", str(clients)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=False,
        )
    finally:
        asyncio.run(drop_database(name))
    if child.returncode != 0:
        raise SystemExit(f"{label} failed:\n{child.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--baseline", metavar="REV", help="also points and its kit as of REV, same rounds")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from kizuna.kit.service import run_loop

        # On uvloop, as the service runs by default (`EVENT_LOOP`).
        print(json.dumps(run_loop(measure(args.child, args.seconds, args.clients), "uvloop")))
        return
    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    targets: list[tuple[str, Path | None]] = [("tree", None)]
    if args.baseline:
        targets.append((f"points@{args.baseline}", export_baseline(args.baseline, workdir / "baseline", "points")))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in targets}
    try:
        print(f"{args.clients} tasks crediting in points' process, {args.seconds:.0f}s per phase", flush=True)
        for round_ in range(1, args.rounds + 1):
            for label, source in targets if round_ % 2 else targets[::-1]:
                result = run_child(label, source, args.seconds, args.clients)
                results[label].append(result)
                print(
                    f"round {round_}  {label:<22} {result['credits_per_second']:7.0f} credits/s  "
                    f"CPU {result['cpu_ms_per_credit']:.3f} ms/credit  {result['cores']:.2f} cores  "
                    f"{result['group']:.1f} credits/group  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        for label, rows in results.items():
            cpu = sorted(row["cpu_ms_per_credit"] for row in rows)
            print(f"{label:<22} CPU per credit, median of {len(cpu)}: {cpu[len(cpu) // 2]:.3f} ms")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
