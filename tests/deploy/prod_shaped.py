"""The prod overlay, run on this machine: every service with exactly the environment the rendered
prod manifests give it, public https host names that only the browser resolves, and in-cluster
URLs for everything the services say to each other.

- `TestCA`: a throwaway certificate authority (`cryptography`) for the ingress's certificate and
  NATS's (prod's Secrets `kizuna-tls` and `nats-tls`).
- `TlsProxy`: the ingress. A small asyncio TLS-terminating reverse proxy on 127.0.0.1 that routes
  by Host to each service's HTTP port and adds `X-Forwarded-For`/`-Proto`/`-Host` as
  ingress-nginx does. Chromium reaches it through `--host-resolver-rules`; nothing else can.
- `InClusterMap`: the cluster's DNS. An in-cluster address (`http://points:8001`, `points:50051`,
  `tls://nats:4222`) becomes a loopback address; scheme and path stay as rendered. Each service
  gets an address of its own in 127.0.1.0/24, as each pod has its own IP (and none is the
  127.0.0.1 that identity's loopback rule admits: its back-channel logout URIs are accepted as
  in-cluster addresses, or not at all).
- `ProdStack`: the secrets an operator creates out of band (client secrets and `prod-clients`,
  NATS users, identity's key-encryption key, fintech's card-token key), NATS over TLS with those
  users, fresh PostgreSQL databases, the init containers' migrations, then every service as its
  Deployment's container command, every process in its own group and ended by `stop()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from kizuna.kit import natsauth, outbound
from kizuna.kit.devstack import nats_server_binary
from kizuna.kit.testing import PostgresServer, end_process, free_port, spawn, wait_for_port

from .deploy_support import BY_NAME, DEPLOY, SERVICES, Rendered, resolve_env

# What this machine must differ in from a pod, and nothing else (the test checks the overrides).
LOCAL_OVERRIDES = {
    "DATABASE_URL": "a fresh PostgreSQL database per service (CNPG's pooler is not here)",
    "HTTP_HOST": "the service's own loopback address (a pod listens on its own interfaces)",
    "GRPC_HOST": "the service's own loopback address",
    "HTTP_PORT": "a free port (concurrent runs share this machine)",
    "GRPC_PORT": "a free port",
    "KIZUNA_DATA_DIR": "a private temp dir (the pod's emptyDir)",
    "NATS_TLS_CA_FILE": "the test CA (where the Secret nats-tls is mounted in a pod)",
    "FORWARDED_ALLOW_IPS": "127.0.0.1: the local ingress (prod: the pod network)",
    "STREAM_REPLICAS": "1: one NATS server here, three in prod",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "removed: no collector runs here",
}
# Each service's own address, as each pod has its own IP (Linux routes all of 127.0.0.0/8 to lo).
POD_NETWORK = "127.0.1.{}"


def free_port_on(ip: str) -> int:
    """A TCP port nothing listens on at `ip` right now."""
    with socket.socket() as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ---- certificates ------------------------------------------------------------------------------


@dataclass
class TestCA:
    """A certificate authority made for one test run; `issue` writes a key and certificate."""

    folder: Path
    _key: Any = None
    _cert: Any = None

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kizuna prod-shaped test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file.write_bytes(self._pem(self._cert))

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    @staticmethod
    def _pem(cert: Any) -> bytes:
        from cryptography.hazmat.primitives import serialization

        data: bytes = cert.public_bytes(serialization.Encoding.PEM)
        return data

    def issue(self, name: str, hosts: list[str]) -> tuple[Path, Path, str]:
        """(certificate, key, SPKI pin) for `hosts` (DNS names or IP addresses)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert_file, key_file = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cert_file.write_bytes(self._pem(cert) + self._pem(self._cert))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_file.chmod(0o600)
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cert_file, key_file, base64.b64encode(hashlib.sha256(spki).digest()).decode()


# ---- the ingress -------------------------------------------------------------------------------


class TlsProxy:
    """A TLS-terminating reverse proxy (HTTP/1.1) routing by Host, in a thread of its own.

    Requests are parsed (head, then a Content-Length body) so that each one gets the forwarding
    headers; responses are relayed as bytes. One upstream connection per browser connection and
    host, as ingress-nginx keeps them."""

    MAX_HEAD = 64 * 1024

    def __init__(self, routes: dict[str, tuple[str, int]], cert_file: Path, key_file: Path) -> None:
        self.routes = routes
        self.cert_file, self.key_file = cert_file, key_file
        self.port = 0
        self.requests: list[tuple[str, str, str]] = []  # (host, method, path) seen, for the report
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> TlsProxy:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        context.set_alpn_protocols(["http/1.1"])
        self._thread.start()

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=context, limit=self.MAX_HEAD)

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = (writer.get_extra_info("peername") or ("127.0.0.1", 0))[0]
        upstream: tuple[str, asyncio.StreamWriter, asyncio.Task[None]] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
                headers = [tuple(h.split(":", 1)) for h in header_lines if ":" in h]
                named = {k.strip().lower(): v.strip() for k, v in headers}
                host = named.get("host", "").split(":")[0].lower()
                method, path = [*request_line.split(" "), "", ""][:2]
                self.requests.append((host, method, path))
                if host not in self.routes:
                    writer.write(b"HTTP/1.1 421 Misdirected Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    await writer.drain()
                    return
                if "chunked" in named.get("transfer-encoding", "").lower():
                    writer.write(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    await writer.drain()
                    return
                body = await reader.readexactly(int(named.get("content-length", "0") or 0))
                if upstream is None or upstream[0] != host or upstream[2].done():
                    if upstream is not None:
                        upstream[1].close()
                    up_reader, up_writer = await asyncio.open_connection(
                        *self.routes[host], local_addr=("127.0.0.1", 0)
                    )
                    pump = asyncio.ensure_future(self._relay(up_reader, writer))
                    upstream = (host, up_writer, pump)
                forwarded = [
                    (k, v) for k, v in headers if not k.strip().lower().startswith(("x-forwarded-", "forwarded"))
                ]
                forwarded += [
                    ("X-Forwarded-For", f" {peer}"),
                    ("X-Forwarded-Proto", " https"),
                    ("X-Forwarded-Host", f" {host}"),
                ]
                out = request_line + "\r\n" + "".join(f"{k}:{v}\r\n" for k, v in forwarded) + "\r\n"
                upstream[1].write(out.encode("latin-1") + body)
                await upstream[1].drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if upstream is not None:
                upstream[1].close()
                upstream[2].cancel()
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            # The service closed the connection: so does the ingress, towards the browser.
            sink.close()


# ---- the cluster's names ------------------------------------------------------------------------


@dataclass
class InClusterMap:
    """In-cluster `host:port` -> `<loopback address>:<local port>`; applied to every rendered value."""

    addresses: dict[str, str] = field(default_factory=dict)

    def add(self, host: str, port: int, ip: str, local_port: int) -> None:
        self.addresses[f"{host}:{port}"] = f"{ip}:{local_port}"

    def apply(self, value: str) -> str:
        if not self.addresses:
            return value
        pattern = "|".join(re.escape(a) for a in sorted(self.addresses, key=len, reverse=True))
        return re.sub(rf"(?<![\w.-])({pattern})(?!\d)", lambda m: self.addresses[m.group(1)], value)

    def leftovers(self, value: str, names: list[str]) -> list[str]:
        """In-cluster addresses still in `value` (a name of the cluster followed by a port)."""
        return re.findall(rf"(?<![\w.-])(?:{'|'.join(map(re.escape, names))}):\d+", value)


# ---- processes ------------------------------------------------------------------------------------


@dataclass
class Pod:
    """One service as its Deployment runs it: the container's argv and environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    init_argv: list[str]
    init_env: dict[str, str]
    ip: str
    http_port: int
    grpc_port: int
    log_path: Path
    readiness: str = "/readyz"
    process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def local_url(self) -> str:
        """Its in-cluster URL as this machine reaches it (the test's own checks use it)."""
        return f"http://{self.ip}:{self.http_port}"

    def start(self, cwd: Path) -> None:
        self._log = self.log_path.open("ab")
        # A pod does not inherit the developer's shell: PATH and the manifest's variables only.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env}
        self.process = spawn(self.argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    def logs(self, tail: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process)
        if self._log is not None:
            self._log.close()
            self._log = None


def local_argv(argv: list[str]) -> list[str]:
    assert argv[0] == "python", argv
    return [sys.executable, *argv[1:]]


@dataclass
class ProdStack:
    """Every declared service as the prod overlay runs it, on this machine (see the module doc)."""

    rendered: Rendered
    postgres: PostgresServer
    workdir: Path
    ca: TestCA = field(init=False)
    cluster: InClusterMap = field(default_factory=InClusterMap)
    pods: dict[str, Pod] = field(default_factory=dict)
    client_secrets: dict[str, str] = field(default_factory=dict)
    # Per service: the local overrides (LOCAL_OVERRIDES) and the variables whose in-cluster
    # addresses were mapped to loopback ports (nothing else of theirs changed).
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    rewritten: dict[str, list[str]] = field(default_factory=dict)
    nats_passwords: dict[str, str] = field(default_factory=dict)
    proxy: TlsProxy | None = None
    proxy_spki: str = ""
    public: dict[str, str] = field(default_factory=dict)  # service -> https://<host>
    nats_process: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, for the report
    nats_port: int = 0

    def __post_init__(self) -> None:
        self.ca = TestCA(self.workdir / "pki")

    # ---- the operator's out-of-band Secrets ----------------------------------------------------
    def operator_secrets(self) -> list[dict[str, Any]]:
        def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}

        self.client_secrets = {name: secrets.token_urlsafe(32) for name in SERVICES}
        secrets_file = self.workdir / "client-secrets.json"
        secrets_file.write_text(json.dumps(self.client_secrets))
        # `python deploy/render.py prod-clients secrets.json`, as deploy/README.md tells the operator.
        result = subprocess.run(
            [sys.executable, str(DEPLOY / "render.py"), "prod-clients", str(secrets_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        self.nats_passwords = natsauth.generate_passwords([*SERVICES, "_ops"])
        docs = [
            secret("identity-clients", {"clients.json": result.stdout}),
            secret("identity-key-encryption", {"keys": "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode()}),
            secret("nats-users", self.nats_passwords),
            secret("fintech-secrets", {"CARD_TOKEN_KEY": secrets.token_urlsafe(48)}),
        ]
        for name in SERVICES:
            docs.append(secret(f"{name}-oidc-client", {"client-secret": self.client_secrets[name]}))
            # CNPG writes <service>-db-app; its values are replaced by a local database below.
            docs.append(
                secret(f"{name}-db-app", {"username": name, "password": "unused", "uri": "postgresql://unused"})
            )
        return docs

    # ---- NATS over TLS, with the services' users -------------------------------------------------
    def start_nats(self) -> None:
        store = self.workdir / "nats"
        store.mkdir()
        cert, key, _ = self.ca.issue("nats", ["nats", "127.0.0.1"])
        self.nats_port = free_port()
        decls = list(BY_NAME.values())
        config = natsauth.server_config(
            decls,
            {name: self.nats_passwords[name] for name in SERVICES},
            port=self.nats_port,
            store_dir=store,
            tls={"cert_file": str(cert), "key_file": str(key)},
        )
        # The prod servers' file store (deploy/nats/cluster/nats.conf): the streams' byte limits
        # (STREAM_MAX_BYTES) are shares of it.
        prod_conf = (DEPLOY / "nats" / "cluster" / "nats.conf").read_text()
        found = re.search(r"^\s*max_file_store:\s*(\S+)\s*$", prod_conf, re.M)
        assert found, "deploy/nats/cluster/nats.conf: no max_file_store"
        config = config.replace(
            f"store_dir: {json.dumps(str(store))}", f"store_dir: {json.dumps(str(store))}\n  max_file_store: {found[1]}"
        )
        path = self.workdir / "nats.conf"
        natsauth.write_private(path, config)
        self.nats_process = spawn(
            [nats_server_binary(), "-c", str(path)],
            stdout=(self.workdir / "nats.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port("127.0.0.1", self.nats_port, timeout=20)

    # ---- the pods' environment ----------------------------------------------------------------
    def plan(self) -> None:
        r = self.rendered
        with_secrets = Rendered(r.name, r.text, [*r.objects, *self.operator_secrets()])
        self.start_nats()
        self.cluster.add("nats", 4222, "127.0.0.1", self.nats_port)
        local: dict[str, tuple[str, int, int]] = {}
        for name in SERVICES:
            main = with_secrets.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
            ports = {p["name"]: p["containerPort"] for p in main["ports"]}
            ip = POD_NETWORK.format(len(local) + 1)
            local[name] = (ip, free_port_on(ip), free_port_on(ip))
            self.cluster.add(name, ports["http"], ip, local[name][1])
            self.cluster.add(name, ports["grpc"], ip, local[name][2])
        for name in SERVICES:
            pod = with_secrets.get("Deployment", name)["spec"]["template"]["spec"]
            (main,) = pod["containers"]
            (init,) = pod["initContainers"]
            data_dir = self.workdir / name
            data_dir.mkdir()
            database = self.postgres.new_database(prefix=f"prod_{name}")
            env: dict[str, str] = {}
            init_env: dict[str, str] = {}
            for target, container in ((env, main), (init_env, init)):
                rendered_env = resolve_env(with_secrets, container)
                mapped = {k: self.cluster.apply(v) for k, v in rendered_env.items()}
                target.update(mapped)
                target.update(
                    DATABASE_URL=database,
                    HTTP_HOST=local[name][0],
                    GRPC_HOST=local[name][0],
                    HTTP_PORT=str(local[name][1]),
                    GRPC_PORT=str(local[name][2]),
                    KIZUNA_DATA_DIR=str(data_dir),
                    NATS_TLS_CA_FILE=str(self.ca.ca_file),
                    FORWARDED_ALLOW_IPS="127.0.0.1",
                    STREAM_REPLICAS="1",
                )
                target.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
                if target is env:
                    self.rewritten[name] = sorted(k for k in rendered_env if mapped[k] != rendered_env[k])
                    self.overrides[name] = {
                        k: target.get(k, "(removed)") for k in LOCAL_OVERRIDES if rendered_env.get(k) != target.get(k)
                    }
            self.public[name] = env["PUBLIC_URL"]
            self.pods[name] = Pod(
                name,
                local_argv([*main["command"], *main.get("args", [])]),
                env,
                local_argv([*init["command"], *init.get("args", [])]),
                init_env,
                *local[name],
                self.workdir / f"{name}.log",
                readiness=main["readinessProbe"]["httpGet"]["path"],
            )

    def leftovers(self) -> dict[str, dict[str, list[str]]]:
        """In-cluster addresses left in any pod's environment (none may be: nothing here resolves them)."""
        names = [*SERVICES, "nats", "otel-collector"]
        found: dict[str, dict[str, list[str]]] = {}
        for name, pod in self.pods.items():
            for key, value in pod.env.items():
                if hits := self.cluster.leftovers(value, names):
                    found.setdefault(name, {})[key] = hits
        return found

    # ---- running -------------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> None:
        """Each pod as the kubelet runs it: its init container (`migrate`) and, once that exited 0,
        its container; all side by side. Then the ingress in front of them."""
        migrations: dict[str, subprocess.Popen[bytes]] = {}
        for name, pod in self.pods.items():
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **pod.init_env}
            log = (self.workdir / f"{name}-migrate.log").open("wb")
            migrations[name] = spawn(pod.init_argv, env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
            log.close()
        deadline = time.monotonic() + timeout
        try:
            while migrations:
                for name, proc in list(migrations.items()):
                    if proc.poll() is None:
                        continue
                    del migrations[name]
                    output = (self.workdir / f"{name}-migrate.log").read_text(errors="replace")
                    command = shlex.join(self.pods[name].init_argv)
                    assert proc.returncode == 0, f"{name}: {command} exited {proc.returncode}:\n{output}"
                    self.pods[name].start(self.workdir)
                assert time.monotonic() < deadline, f"migrations still running after {timeout}s: {sorted(migrations)}"
                time.sleep(0.1)
        finally:
            for proc in migrations.values():
                end_process(proc)
        for pod in self.pods.values():
            self.wait(pod, pod.readiness, max(deadline - time.monotonic(), 5))
        routes = {
            urlsplit(self.public[name]).hostname or "": (pod.ip, pod.http_port) for name, pod in self.pods.items()
        }
        cert, key, self.proxy_spki = self.ca.issue("ingress", sorted(routes))
        self.proxy = TlsProxy(routes, cert, key).start()

    def wait(self, pod: Pod, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with outbound.client(timeout=2) as http:
            while time.monotonic() < deadline:
                if pod.process is not None and pod.process.poll() is not None:
                    raise AssertionError(f"{pod.name} exited with {pod.process.returncode}:\n{pod.logs()}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(pod.local_url + path).status_code == 200:
                        return
                time.sleep(0.2)
        raise AssertionError(f"{pod.name}: {path} not 200 after {timeout}s:\n{pod.logs()}")

    def stop(self) -> None:
        """Every process ended, whatever failed before (the first failure re-raised after)."""
        failures: list[BaseException] = []
        if self.proxy is not None:
            try:
                self.proxy.stop()
            except BaseException as exc:
                failures.append(exc)

        def stop(pod: Pod) -> None:
            try:
                pod.stop()
            except BaseException as exc:
                failures.append(exc)

        # Side by side, as a rollout ends pods: each has its shutdown grace to drain.
        stopping = [threading.Thread(target=stop, args=(pod,)) for pod in self.pods.values()]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        if self.nats_process is not None:
            try:
                end_process(self.nats_process)
            except BaseException as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def web_sessions_open(self, member_id: str) -> dict[str, int]:
        """Per service with pages: the member's web sessions not ended, read from its database."""
        import asyncpg

        async def count(url: str) -> int:
            connection = await asyncpg.connect(url)
            try:
                value = await connection.fetchval(
                    "SELECT count(*) FROM kit_web_session WHERE member_id = $1 AND ended_at IS NULL", member_id
                )
            finally:
                await connection.close()
            return int(value)

        async def every() -> dict[str, int]:
            found = {}
            for name, pod in self.pods.items():
                if BY_NAME[name].sign_in is not None:
                    found[name] = await count(pod.env["DATABASE_URL"])
            return found

        # Playwright's sync API runs a loop in this thread: the query gets a thread of its own.
        result: dict[str, int] = {}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.update(asyncio.run(every()))
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        worker.join(30)
        if errors:
            raise errors[0]
        assert set(result) == {n for n in self.pods if BY_NAME[n].sign_in is not None}, result
        return {name: n for name, n in result.items() if n}

    def log_tails(self, lines: int = 12) -> str:
        """The last lines of every service's log (shown when the journey fails)."""
        return "\n".join(f"--- {name} ---\n{pod.logs(lines)}" for name, pod in self.pods.items())

    # ---- the browser's view --------------------------------------------------------------------
    def chromium_args(self) -> list[str]:
        """Only the browser resolves the public hosts (to the local ingress), and it trusts exactly
        the ingress's certificate key."""
        assert self.proxy is not None
        rules = ", ".join(f"MAP {host} 127.0.0.1:{self.proxy.port}" for host in self.proxy.routes)
        return [f"--host-resolver-rules={rules}", f"--ignore-certificate-errors-spki-list={self.proxy_spki}"]


@contextlib.contextmanager
def prod_stack(rendered: Rendered, postgres: PostgresServer, workdir: Path) -> Iterator[ProdStack]:
    stack = ProdStack(rendered, postgres, workdir)
    try:
        for phase in (stack.plan, stack.start):
            started = time.monotonic()
            phase()
            stack.timings[phase.__name__] = round(time.monotonic() - started, 1)
        yield stack
    finally:
        started = time.monotonic()
        stack.stop()
        print(f"every process ended in {time.monotonic() - started:.1f}s")
