"""Token endpoint benchmark (not a test): identity's client_credentials grant beside the reference,
node-oidc-provider (npm `oidc-provider`, bench/anchor/token_anchor.mjs), in one run.

    .venv/bin/python bench/token_bench.py [--seconds 10] [--rounds 2] [--connections 32] [--baseline REV]

Both issue ES256-signed JWT access tokens (RFC 9068) to one confidential client with one scope,
and run as one process each on loopback: identity as `python -m identity` on a fresh SQLite
database (with its own NATS user on a real nats-server), the anchor as one Node process. The load
comes from `wrk` (Debian package `wrk`) posting the form with HTTP Basic client authentication
over `--connections` keep-alive connections, in alternating rounds (identity, anchor, then anchor,
identity, ...: which goes first alternates too), so both see the same machine. Before the rounds
each token endpoint must refuse a wrong secret and issue a token that verifies against its JWKS.

`--baseline REV` adds identity as of a git revision (its kit and identity sources, exported with
`git archive`) to the same rounds: before and after beside the anchor in one run.

Per round: tokens/s, p50/p99 latency, server CPU seconds (tokens per CPU second does not depend
on what else the machine runs) and the load average. At the end: the ratio identity / anchor.
Every process started here is ended whatever happens.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet
from kizuna.kit import declaration
from kizuna.kit.testing import NatsServer, ServiceProcess, end_process, free_port, spawn

from bench.baseline import export_baseline

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT / "bench" / "anchor" / "token_anchor.mjs"
CLIENT_ID = "bench-svc"
CLIENT_SECRET = "bench-secret-" + base64.urlsafe_b64encode(os.urandom(24)).decode()
SCOPE = "points:credit"
AUDIENCE = "kizuna"

# wrk: POST the grant; `done` prints one JSON line the bench reads (latencies in microseconds).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=%(scope)s"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic %(basic)s"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class Target:
    name: str
    url: str  # the token endpoint
    jwks: str
    issuer: str
    pid: int


@dataclass
class Round:
    target: str
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: float  # the server's CPU time during the round
    seconds: float
    load: tuple[float, float]  # 1-minute load average at the start and the end of the round

    @property
    def per_cpu_s(self) -> float:
        return self.tokens_per_s * self.seconds / self.cpu_s if self.cpu_s else float("nan")


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, its threads and its child processes (a supervisor's
    workers), the living ones and the reaped ones."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                continue
    ticks, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat_fields(current)
        except OSError:
            continue
        # utime + stime, and for the process itself cutime + cstime (workers it has reaped).
        ticks += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if current == pid else 0)
        todo.extend(children.get(current, ()))
    return ticks / os.sysconf("SC_CLK_TCK")


def check_endpoint(target: Target) -> None:
    """The endpoint authenticates the client and issues an ES256 JWT access token that verifies."""
    with httpx.Client(timeout=30) as http:
        wrong = http.post(target.url, auth=(CLIENT_ID, "not-the-secret"), data={"grant_type": "client_credentials"})
        if wrong.status_code != 401:
            raise SystemExit(f"{target.name}: a wrong client secret got {wrong.status_code}, not 401")
        response = http.post(
            target.url, auth=(CLIENT_ID, CLIENT_SECRET), data={"grant_type": "client_credentials", "scope": SCOPE}
        )
        if response.status_code != 200:
            raise SystemExit(f"{target.name}: token request failed: {response.status_code} {response.text[:300]}")
        body = response.json()
        keys = KeySet.import_key_set(http.get(target.jwks).json())
    token = jwt.decode(body["access_token"], keys, algorithms=["ES256"])
    claims = token.claims
    if token.header.get("typ") != "at+jwt" or token.header.get("alg") != "ES256":
        raise SystemExit(f"{target.name}: unexpected token header {token.header}")
    if claims.get("iss") != target.issuer or claims.get("aud") != AUDIENCE or claims.get("scope") != SCOPE:
        raise SystemExit(f"{target.name}: unexpected claims {claims}")
    if claims.get("client_id") != CLIENT_ID or not isinstance(claims.get("exp"), int):
        raise SystemExit(f"{target.name}: unexpected claims {claims}")


def run_wrk(target: Target, seconds: int, connections: int, threads: int, script: Path) -> Round:
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds(target.pid)
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s"]
    result = subprocess.run(
        [*argv, "-s", str(script), target.url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    cpu = cpu_seconds(target.pid) - cpu_before
    line = next((x for x in result.stdout.splitlines() if x.startswith("WRK ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({result.returncode}): {result.stdout[-500:]} {result.stderr[-500:]}")
    data: dict[str, Any] = json.loads(line[4:])
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    duration = data["duration_us"] / 1e6
    return Round(
        target.name,
        data["requests"] / duration,
        data["p50_us"] / 1000,
        data["p99_us"] / 1000,
        errors,
        cpu,
        duration,
        (load_before, os.getloadavg()[0]),
    )


def start_anchor(workdir: Path) -> tuple[subprocess.Popen[str], Target]:
    if not (ROOT / "node_modules" / "oidc-provider").exists():
        raise SystemExit("node-oidc-provider is not installed: run `npm install` in the repository root")
    spec = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": SCOPE, "audience": AUDIENCE}
    log = (workdir / "anchor.log").open("w")
    process = spawn(
        ["node", str(ANCHOR), json.dumps(spec)],
        env={**os.environ, "NODE_ENV": "production"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if selector.select(timeout=0.2):
            line = process.stdout.readline()
            if line.startswith("{"):
                info = json.loads(line)
                issuer = info["issuer"]
                return process, Target("anchor", f"{issuer}/token", f"{issuer}/jwks", issuer, process.pid)
    end_process(process)
    raise SystemExit(f"the anchor did not start: {(workdir / 'anchor.log').read_text()[-2000:]}")


def start_identity(
    workdir: Path,
    nats: NatsServer,
    name: str = "identity",
    source: Path | None = None,
    workers: int = 1,
    loop: str = "uvloop",
) -> ServiceProcess:
    """identity as `python -m identity` on a fresh SQLite database, serving from `workers`
    processes (`KIZUNA_WORKERS`); from `source` (a tree holding libs/kit/src and
    services/identity/src) instead of the installed workspace when given."""
    port = free_port()  # identity must know its own issuer URL before it binds
    issuer = f"http://127.0.0.1:{port}"
    client = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "grant_types": ["client_credentials"]}
    env = {
        "KIZUNA_ISSUER": issuer,
        "KIZUNA_AUDIENCE": AUDIENCE,
        "KIZUNA_DATA_DIR": str(workdir / name),
        "KIZUNA_CLIENTS": json.dumps([{**client, "scopes": [SCOPE]}]),
        "KIZUNA_SCOPES": json.dumps(declaration.scope_catalogue(declaration.discover())),
        "LOG_FORMAT": "json",
        "KIZUNA_WORKERS": str(workers),
        "NATS_URL": nats.address,
        "EVENT_LOOP": loop,
        **nats.service_env("identity"),
    }
    if source is not None:
        env["PYTHONPATH"] = f"{source / 'libs' / 'kit' / 'src'}{os.pathsep}{source / 'services' / 'identity' / 'src'}"
    process = ServiceProcess("identity", env, port, 0, workdir / f"{name}.log")
    # ServiceProcess merges os.environ: a DATABASE_URL there would replace the fresh SQLite file.
    saved = os.environ.pop("DATABASE_URL", None)
    try:
        return process.start(timeout=120)
    finally:
        if saved is not None:
            os.environ["DATABASE_URL"] = saved


def _in(group: list[Round], name: str) -> Round:
    """The round of target `name` in one round's group (the targets' order alternates)."""
    return next(r for r in group if r.target == name)


def report(rounds: list[Round], names: list[str], args: argparse.Namespace) -> None:
    print(
        f"token endpoint, client_credentials, ES256 JWT access tokens; wrk -c {args.connections} "
        f"-t {args.threads}, {args.seconds:g} s rounds; {os.cpu_count()} CPUs"
    )
    width = max(len(n) for n in names)
    print(
        f"{'round':>5}  {'target':{width}} {'tokens/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'CPU s':>6} {'tok/CPU s':>9}  load avg (start-end)"
    )
    for n, r in enumerate(rounds, 1):
        print(
            f"{(n - 1) // len(names) + 1:>5}  {r.target:{width}} {r.tokens_per_s:>9.0f} {r.p50_ms:>8.1f} "
            f"{r.p99_ms:>8.1f} {r.errors:>6} {r.cpu_s:>6.1f} {r.per_cpu_s:>9.0f}  {r.load[0]:.1f}-{r.load[1]:.1f}"
        )
    summary = {}
    for name in names:
        mine = [r for r in rounds if r.target == name]
        summary[name] = (
            statistics.mean(r.tokens_per_s for r in mine),
            statistics.median(r.p99_ms for r in mine),
            statistics.mean(r.per_cpu_s for r in mine),
        )
        low, high = min(r.tokens_per_s for r in mine), max(r.tokens_per_s for r in mine)
        print(
            f"{name}: {summary[name][0]:.0f} tokens/s (rounds {low:.0f}-{high:.0f}), p99 {summary[name][1]:.1f} ms "
            f"(median of rounds), {summary[name][2]:.0f} tokens per CPU second"
        )
    by_round = [rounds[i : i + len(names)] for i in range(0, len(rounds), len(names))]
    for name in names[:-1]:
        pairs = [_in(group, name).tokens_per_s / _in(group, "anchor").tokens_per_s for group in by_round]
        print(
            f"ratio {name} / anchor: {summary[name][0] / summary['anchor'][0]:.2f} tokens/s "
            f"(per round: {', '.join(f'{p:.2f}' for p in pairs)}), "
            f"{summary[name][2] / summary['anchor'][2]:.2f} per CPU second"
        )
    if any(r.errors for r in rounds):
        print("NOTE: some requests failed (see the errors column); those rounds overstate throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target (alternating)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load per target first")
    parser.add_argument(
        "--workers",
        default=str(os.cpu_count() or 1),
        help="identity's serving processes (KIZUNA_WORKERS); a comma-separated list runs each count "
        "as its own target in the same rounds (default: one per CPU; the anchor is one Node process)",
    )
    parser.add_argument(
        "--loops",
        default="uvloop",
        help="identity's event loop (EVENT_LOOP, the kit's default uvloop): asyncio, uvloop, or both "
        "comma-separated, each its own target",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run identity as of this git revision (its kit and identity sources) in the same rounds",
    )
    args = parser.parse_args()
    for tool in ("wrk", "node", "git"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH (Debian: apt-get install {tool if tool != 'node' else 'nodejs'})")

    with tempfile.TemporaryDirectory(prefix="token-bench-") as tmp:
        workdir = Path(tmp)
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        script = workdir / "token.lua"
        script.write_text(WRK_SCRIPT % {"scope": SCOPE.replace(":", "%3A"), "basic": basic})
        nats = NatsServer(0, workdir / "nats", auth=True)
        anchor: subprocess.Popen[str] | None = None
        identities: list[ServiceProcess] = []
        try:
            nats.start()
            targets: dict[str, Target] = {}
            counts = [int(n) for n in args.workers.split(",")]
            loops = args.loops.split(",")
            variants: list[tuple[str, Path | None, int, str]] = [
                (f"identity x{n}" + (f" {loop}" if len(loops) > 1 else ""), None, n, loop)
                for n in counts
                for loop in loops
            ]
            if args.baseline:
                # A tree from before the worker processes serves from one.
                source = export_baseline(args.baseline, workdir / "baseline", "identity")
                variants.append((f"identity@{args.baseline}", source, 1, "asyncio"))  # (it has no EVENT_LOOP)
            for name, source, workers, loop in variants:
                label = name.replace("@", "-").replace(" ", "-")
                identity = start_identity(workdir, nats, label, source, workers, loop)
                identities.append(identity)
                assert identity.process is not None
                url = identity.url
                targets[name] = Target(name, f"{url}/token", f"{url}/jwks", url, identity.process.pid)
            anchor, targets["anchor"] = start_anchor(workdir)
            for target in targets.values():
                check_endpoint(target)
            if args.warmup > 0:
                for target in targets.values():
                    run_wrk(target, args.warmup, args.connections, args.threads, script)
            rounds = []
            for round_ in range(args.rounds):
                # Which target goes first alternates: a machine warming or cooling through the run
                # favours neither side.
                order = list(targets.values())
                for target in order if round_ % 2 == 0 else order[::-1]:
                    rounds.append(run_wrk(target, args.seconds, args.connections, args.threads, script))
                    print(
                        f"  {target.name}: {rounds[-1].tokens_per_s:.0f} tokens/s, p99 {rounds[-1].p99_ms:.1f} ms",
                        flush=True,
                    )
            report(rounds, list(targets), args)
        finally:
            if anchor is not None:
                end_process(anchor)
            for identity in identities:
                identity.stop()
            nats.stop()


if __name__ == "__main__":
    sys.exit(main())
