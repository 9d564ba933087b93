"""The rendered NetworkPolicies allow exactly the ecosystem's flows: every flow the declarations
name passes both the source's egress and the destination's ingress policies, and every other
service-to-service flow is denied. A small evaluator of NetworkPolicy semantics over the rendered
pods; the expected flows are worked out here from the declarations, not read from the renderer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from .deploy_support import BY_NAME, ISSUER, LEDGER, OVERLAYS, SERVICES, Rendered


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...]

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], pod: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # pod-to-pod flows only here
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": pod.namespace}
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), pod.label_dict)


def port_matches(rule: dict[str, Any], port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports)


def side_allows(policies: list[dict[str, Any]], pod: Pod, other: Pod, port: int, direction: str) -> bool:
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    relevant = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], pod.label_dict)
    ]
    if not relevant:
        return True
    for policy in relevant:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (
                not peers or any(peer_matches(x, other, policy["metadata"]["namespace"]) for x in peers)
            ) and port_matches(rule, port):
                return True
    return False


def allowed(r: Rendered, src: Pod, dst: Pod, port: int) -> bool:
    policies = r.of_kind("NetworkPolicy")
    return side_allows(policies, src, dst, port, "Egress") and side_allows(policies, dst, src, port, "Ingress")


def pods(r: Rendered) -> dict[str, Pod]:
    (ns,) = r.of_kind("Namespace")
    namespace = ns["metadata"]["name"]
    found = {}
    for w in r.objects:
        if w["kind"] in ("Deployment", "StatefulSet"):
            labels = w["spec"]["template"]["metadata"]["labels"]
            found[w["metadata"]["name"]] = Pod(w["metadata"]["name"], namespace, tuple(sorted(labels.items())))
        if w["kind"] == "Pooler":
            labels = {**w["spec"]["template"]["metadata"]["labels"], "cnpg.io/poolerName": w["metadata"]["name"]}
            found[w["metadata"]["name"]] = Pod(w["metadata"]["name"], namespace, tuple(sorted(labels.items())))
        if w["kind"] == "Cluster":
            labels = {**w["spec"]["inheritedMetadata"]["labels"], "cnpg.io/cluster": w["metadata"]["name"]}
            found[w["metadata"]["name"]] = Pod(w["metadata"]["name"], namespace, tuple(sorted(labels.items())))
    found["ingress-controller"] = Pod(
        "ingress-controller", "ingress-nginx", (("app.kubernetes.io/name", "ingress-nginx"),)
    )
    found["kube-dns"] = Pod("kube-dns", "kube-system", (("k8s-app", "kube-dns"),))
    found["cnpg-operator"] = Pod("cnpg-operator", "cnpg-system", (("app.kubernetes.io/name", "cloudnative-pg"),))
    found["prometheus"] = Pod("prometheus", "monitoring", (("app.kubernetes.io/name", "prometheus"),))
    return found


def database_of(found: dict[str, Pod], service: str) -> Pod:
    """What the service connects to for its database: prod's pooler, dev's one server."""
    return found.get(f"{service}-db-pooler") or found["postgres"]


def grpc_flows() -> set[tuple[str, str]]:
    """(caller, callee) over gRPC: the declared calls; every service to identity; every service
    with pages to the ledger (the kit's header shows the live balance)."""
    flows = {(d.name, peer) for d in BY_NAME.values() for peer in d.calls}
    flows |= {(d.name, ISSUER) for d in BY_NAME.values() if d.name != ISSUER}
    flows |= {(d.name, LEDGER) for d in BY_NAME.values() if d.sign_in is not None}
    return flows


def http_flows() -> set[tuple[str, str]]:
    """(client, server) over HTTP between services: everyone to identity (discovery, JWKS, token),
    identity to everyone (back-channel logout, a member's data export)."""
    others = [name for name in SERVICES if name != ISSUER]
    return {(name, ISSUER) for name in others} | {(ISSUER, name) for name in others}


def expected_flows(found: dict[str, Pod]) -> list[tuple[str, Pod, Pod, int]]:
    flows = []
    for s, (http, _grpc) in SERVICES.items():
        me = found[s]
        flows.append(("ingress controller -> HTTP", found["ingress-controller"], me, http))
        flows.append(("DNS", me, found["kube-dns"], 53))
        flows.append(("NATS", me, found["nats"], 4222))
        flows.append(("own database", me, database_of(found, s), 5432))
        if f"{s}-db-pooler" in found:
            flows.append(("pooler -> cluster", found[f"{s}-db-pooler"], found[f"{s}-db"], 5432))
        if "otel-collector" in found:
            flows.append(("collector", me, found["otel-collector"], 4317))
    for caller, callee in sorted(grpc_flows()):
        flows.append(("gRPC", found[caller], found[callee], SERVICES[callee][1]))
    for client, server in sorted(http_flows()):
        flows.append(("HTTP", found[client], found[server], SERVICES[server][0]))
    flows.append(("NATS routes", found["nats"], found["nats"], 6222))
    if "tempo" in found:
        flows.append(("spans", found["otel-collector"], found["tempo"], 4317))
        flows.append(("trace queries", found["prometheus"], found["tempo"], 3200))
    return [(f"{name}: {a.name} -> {b.name}:{port}", a, b, port) for name, a, b, port in flows]


def denied_flows(found: dict[str, Pod]) -> list[tuple[str, Pod, Pod, int]]:
    """Every service-to-service flow nobody declared, on both ports, and a few others."""
    flows = []
    grpc, http = grpc_flows(), http_flows()
    for a in SERVICES:
        for b in SERVICES:
            if (a, b) not in grpc:
                flows.append((found[a], found[b], SERVICES[b][1]))
            if (a, b) not in http and a != b:
                flows.append((found[a], found[b], SERVICES[b][0]))
        flows.append((found["ingress-controller"], found[a], SERVICES[a][1]))  # gRPC is internal
        flows.append((found[a], found["nats"], 6222))
        for b in SERVICES:
            if b != a and f"{b}-db" in found:  # prod: one database per service
                flows.append((found[a], found[f"{b}-db"], 5432))
                flows.append((found[a], found[f"{b}-db-pooler"], 5432))
            if b != a and f"{b}-db" not in found:
                pass  # dev: one server holds every database; the label says whose
    flows.append((found["ingress-controller"], found["nats"], 4222))
    if "tempo" in found:
        flows.append((found[next(iter(SERVICES))], found["tempo"], 4317))  # spans go through the collector
    return [(f"{a.name} -> {b.name}:{port}", a, b, port) for a, b, port in flows]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ecosystem_flows_are_allowed(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    assert r.of_kind("NetworkPolicy"), f"{overlay} has no network policies"
    found = pods(r)
    blocked = [name for name, a, b, port in expected_flows(found) if not allowed(r, a, b, port)]
    assert not blocked, f"{overlay}: needed flows are blocked: {blocked}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_other_flows_are_denied(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    found = pods(r)
    open_ = [name for name, a, b, port in denied_flows(found) if allowed(r, a, b, port)]
    assert not open_, f"{overlay}: flows nobody needs are open: {open_}"


def test_cnpg_operator_reaches_instances(rendered: dict[str, Rendered]) -> None:
    r = rendered["prod"]
    found = pods(r)
    for s in SERVICES:
        assert allowed(r, found["cnpg-operator"], found[f"{s}-db"], 8000)
        assert allowed(r, found[f"{s}-db"], found[f"{s}-db"], 5432), "replication"


def test_prometheus_reaches_every_metrics_endpoint_the_alerts_read(rendered: dict[str, Rendered]) -> None:
    """A scrape the policies block leaves its alerts silent: CloudNativePG's exporter (backups,
    WAL archiving), the NATS exporter (JetStream, dead letters), the collector (the kit's metrics)."""
    r = rendered["prod"]
    found = pods(r)
    prometheus = found["prometheus"]
    for s in SERVICES:
        assert allowed(r, prometheus, found[f"{s}-db"], 9187), f"{s}-db's exporter"
    assert allowed(r, prometheus, found["nats"], 7777)
    assert allowed(r, prometheus, found["otel-collector"], 8889)
    assert not allowed(r, prometheus, found[f"{next(iter(SERVICES))}-db"], 5432), "metrics, not the database"


def test_a_declared_call_opens_exactly_that_flow(rendered: dict[str, Rendered]) -> None:
    """The evaluator can fail: the rendered policies deny a gRPC flow no declaration names."""
    r = rendered["prod"]
    found = pods(r)
    undeclared = [(a, b) for a in SERVICES for b in SERVICES if (a, b) not in grpc_flows()]
    assert undeclared, "every service calls every other: nothing to deny"
    for a, b in undeclared:
        assert not allowed(r, found[a], found[b], SERVICES[b][1]), f"{a} -> {b} gRPC is open"
