"""Each service runs the way the rendered dev manifest runs it: the init container's command
migrates, the container's command serves with the manifest's environment (ConfigMaps and Secrets
resolved from the rendered objects), the manifest's probes answer, and SIGTERM ends it with exit
code 0 within terminationGracePeriodSeconds.

Only what must point at this machine's infrastructure is overridden, and every override is
recorded in the test's output: NATS_URL and NATS_PASSWORD (the test NATS; the user is the
manifest's), DATABASE_URL (a fresh PostgreSQL
database each), <PEER>_ADDR and identity's in-cluster URLs (KIZUNA_DISCOVERY_URL, KIZUNA_JWKS_URL,
KIZUNA_TOKEN_URL: the identity started here; KIZUNA_INTERNAL_LINKS and the back-channel logout
addresses in identity's KIZUNA_CLIENTS: the services started here), KIZUNA_ISSUER (a public URL nothing here answers,
as a pod cannot reach the ingress: sign-in must work through the in-cluster URLs), HTTP_HOST /
GRPC_HOST (127.0.0.1), KIZUNA_DATA_DIR (a private temp dir, as the pod's emptyDir is private),
HTTP_PORT / GRPC_PORT (only when the manifest's port is busy), and `python` -> this venv's python.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kizuna.kit import outbound
from kizuna.kit.testing import (
    NatsServer,
    PostgresServer,
    ServiceProcess,
    end_process,
    free_port,
    port_is_free,
    spawn,
)

from .deploy_support import BY_NAME, ISSUER, SERVICES, Rendered, resolve_env


@dataclass
class ManifestProcess(ServiceProcess):
    """A ServiceProcess started with the manifest's argv and only the manifest's environment
    (a pod does not inherit the developer's shell)."""

    argv: list[str] = field(default_factory=list)
    cwd: Path | None = None

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> ManifestProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env}
        self._log = self.log_path.open("ab")
        self.process = spawn(self.argv, env=env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT)
        return self


def local_argv(argv: list[str]) -> list[str]:
    assert argv[0] == "python", argv
    return [sys.executable, *argv[1:]]


def grpc_health(address: str, probe: dict[str, Any]) -> int:
    """The startup probe as the kubelet runs it: each check within timeoutSeconds, retried every
    periodSeconds up to failureThreshold times; the last status (or the last error)."""
    attempts = int(probe["failureThreshold"])
    for attempt in range(attempts):
        try:
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
                status: int = stub.Check(request, timeout=float(probe["timeoutSeconds"])).status
            if status == health_pb2.HealthCheckResponse.SERVING or attempt == attempts - 1:
                return status
        except grpc.RpcError:
            if attempt == attempts - 1:
                raise
        time.sleep(float(probe["periodSeconds"]))
    raise AssertionError("unreachable")


def wait_for_probe(proc: ManifestProcess, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with outbound.client(timeout=1) as http:
        while time.monotonic() < deadline:
            if proc.process is not None and proc.process.poll() is not None:
                pytest.fail(f"{proc.name} exited with {proc.process.returncode}:\n{proc.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if http.get(url).status_code == 200:
                    return
            time.sleep(0.1)
    pytest.fail(f"{proc.name}: {url} not 200 after {timeout}s:\n{proc.logs()}")


# Five services migrate, start and stop here one after another; on a loaded machine that takes
# minutes, not the suite's default per-test limit.
@pytest.mark.timeout(900)
def test_services_run_as_the_dev_manifests_say(
    rendered: dict[str, Rendered],
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    r = rendered["dev"]
    overrides: dict[str, dict[str, str]] = {}
    plans: dict[str, dict[str, Any]] = {}

    # Ports first: every service must know where its peers and identity listen.
    for name in SERVICES:
        pod = r.get("Deployment", name)["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        env = resolve_env(r, main)
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        local = {}
        for port_name, env_name in (("http", "HTTP_PORT"), ("grpc", "GRPC_PORT")):
            assert env[env_name] == str(ports[port_name]), f"{name}: {env_name} vs containerPort"
            local[port_name] = ports[port_name] if port_is_free(ports[port_name]) else free_port()
        plans[name] = {"pod": pod, "main": main, "env": env, "ports": ports, "local": local}

    identity_url = f"http://127.0.0.1:{plans[ISSUER]['local']['http']}"
    # The browser-facing issuer: nothing listens there, as the ingress is out of a pod's reach.
    public_issuer = f"http://localhost:{free_port()}"
    for name, plan in plans.items():
        env = plan["env"]
        data_dir = tmp_path / name
        data_dir.mkdir()
        changes = {
            # The test NATS, as this service's own user (the manifest names it; only the password
            # is this server's).
            **(nats_server.service_env(name) or {"NATS_URL": nats_server.url}),
            "DATABASE_URL": postgres_server.new_database(prefix=f"deploy_{name}"),
            "KIZUNA_ISSUER": public_issuer,
            "HTTP_HOST": "127.0.0.1",
            "GRPC_HOST": "127.0.0.1",
            "KIZUNA_DATA_DIR": str(data_dir),
            "HTTP_PORT": str(plan["local"]["http"]),
            "GRPC_PORT": str(plan["local"]["grpc"]),
        }
        for peer, peer_plan in plans.items():
            changes[f"{peer.upper()}_ADDR"] = f"127.0.0.1:{peer_plan['local']['grpc']}"
        # In-cluster identity endpoints become the local identity's.
        changes["KIZUNA_DISCOVERY_URL"] = f"{identity_url}/.well-known/openid-configuration"
        changes["KIZUNA_JWKS_URL"] = f"{identity_url}/jwks"
        changes["KIZUNA_TOKEN_URL"] = f"{identity_url}/token"
        changes["KIZUNA_INTERNAL_LINKS"] = json.dumps(
            {peer: f"http://127.0.0.1:{peer_plan['local']['http']}" for peer, peer_plan in plans.items()}
        )
        if "KIZUNA_CLIENTS" in env:
            # identity's registrations name each service's in-cluster address for back-channel
            # logout (`http://<name>:<port>`): the same local services as KIZUNA_INTERNAL_LINKS.
            clients = env["KIZUNA_CLIENTS"]
            for peer, peer_plan in plans.items():
                clients = clients.replace(
                    f"http://{peer}:{peer_plan['ports']['http']}/", f"http://127.0.0.1:{peer_plan['local']['http']}/"
                )
            changes["KIZUNA_CLIENTS"] = clients
        assert {"KIZUNA_DISCOVERY_URL", "KIZUNA_JWKS_URL", "KIZUNA_TOKEN_URL"} <= set(env), name
        overrides[name] = {k: v for k, v in changes.items() if env.get(k) != v}
        env.update(changes)
    print("overrides of the manifests' environment:\n" + json.dumps(overrides, indent=2, default=str))
    for name, override in overrides.items():
        assert set(override) <= {
            "NATS_URL",
            "NATS_PASSWORD",
            "DATABASE_URL",
            "KIZUNA_ISSUER",
            "HTTP_HOST",
            "GRPC_HOST",
            "KIZUNA_DATA_DIR",
            "HTTP_PORT",
            "GRPC_PORT",
            "KIZUNA_DISCOVERY_URL",
            "KIZUNA_JWKS_URL",
            "KIZUNA_TOKEN_URL",
            "KIZUNA_INTERNAL_LINKS",
            "KIZUNA_CLIENTS",
            *(f"{p.upper()}_ADDR" for p in SERVICES),
        }, f"{name}: unexpected override"

    # The init container: `python -m <name> migrate`, with the same environment.
    migrations = {}
    for name, plan in plans.items():
        (init,) = plan["pod"]["initContainers"]
        argv = local_argv([*init["command"], *init.get("args", [])])
        migrations[name] = spawn(
            argv,
            env={"PATH": os.environ["PATH"], **plan["env"]},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    try:
        for name, migration in migrations.items():
            out, _ = migration.communicate(timeout=90)
            assert migration.returncode == 0, f"{name} migrate failed:\n{out.decode(errors='replace')}"
    finally:
        for migration in migrations.values():
            end_process(migration)  # a migration still running after a failure or timeout

    # The container: identity first (the issuer), then the others side by side.
    procs: dict[str, ManifestProcess] = {}
    try:
        for name in [ISSUER, *(n for n in plans if n != ISSUER)]:
            plan = plans[name]
            main = plan["main"]
            procs[name] = ManifestProcess(
                name,
                plan["env"],
                plan["local"]["http"],
                plan["local"]["grpc"],
                tmp_path / f"{name}.log",
                argv=local_argv([*main["command"], *main.get("args", [])]),
                cwd=tmp_path,
            ).start()
            if name == ISSUER:
                wait_for_probe(procs[name], f"{identity_url}/healthz")

        for name, proc in procs.items():
            main = plans[name]["main"]
            local_port = {"http": proc.http_port, "grpc": proc.grpc_port}
            ready = main["readinessProbe"]["httpGet"]
            wait_for_probe(proc, f"http://127.0.0.1:{local_port[ready['port']]}{ready['path']}")
            live = main["livenessProbe"]["httpGet"]
            assert httpx.get(f"http://127.0.0.1:{local_port[live['port']]}{live['path']}").status_code == 200
            startup = main["startupProbe"]["grpc"]
            assert startup["port"] == plans[name]["ports"]["grpc"]
            status = grpc_health(proc.grpc_address, main["startupProbe"])
            assert status == health_pb2.HealthCheckResponse.SERVING, proc.logs()

        # Web sign-in reads discovery in-cluster and sends the browser to the public issuer.
        for name, proc in procs.items():
            if BY_NAME[name].sign_in is None:
                continue
            login = httpx.get(f"http://127.0.0.1:{proc.http_port}/auth/login", follow_redirects=False, timeout=10)
            assert login.status_code in (302, 303), f"{name}: /auth/login {login.status_code}:\n{proc.logs()}"
            assert login.headers["location"].startswith(f"{public_issuer}/authorize?"), login.headers["location"]

        # SIGTERM to all, as a rollout or a node drain does; each must exit 0 in its grace period.
        for proc in procs.values():
            proc.signal(signal.SIGTERM)
        for name, proc in procs.items():
            grace = plans[name]["pod"]["terminationGracePeriodSeconds"]
            assert proc.process is not None
            try:
                code = proc.process.wait(grace)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running {grace}s after SIGTERM:\n{proc.logs()}")
            assert code == 0, f"{name} exited with {code}:\n{proc.logs()}"
            lines = [line for line in proc.logs().splitlines() if line.startswith("{")]
            assert lines, f"{name}: LOG_FORMAT=json but no JSON log lines:\n{proc.logs()}"
            assert all(json.loads(line)["service"] == name for line in lines[-3:])
    finally:
        # Every process is ended even when ending one fails (then reported after the rest).
        failures: list[BaseException] = []
        for proc in procs.values():
            try:
                proc.stop()
            except BaseException as exc:  # re-raised below, after the others are ended
                failures.append(exc)
        if failures:
            raise failures[0]
